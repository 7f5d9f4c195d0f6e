"""A rule expression as Python evaluates it: the operation IR's expression tree (``ops.Expr``).

The in-place backends (NumPy, torch) write an element-wise statement as one call per operation, in the
order in which Python evaluates the expression that the expression printer writes for it
(``backends/printer.py``, SymPy's ``StrPrinter``): ``lr*m/((1 - b**t)*(eps + u))`` is
``(lr * m) / ((1 - b**t) * (eps + u))``. This pass builds that tree from the sympy expression itself,
taking the printer's decisions (the order of a sum's terms and of a product's factors, which factors
go below the fraction bar, where a minus sign binds, ``x**0.5`` as a square root, a select as Python's
conditional or an element-wise ``where``), so that the three-address code computes what the printed
expression computes, bit for bit. A sub-expression that reads no per-element array is one
:class:`~optforge.compiler.ops.Leaf`, printed by the expression printer.

Pure: a function of the expression and of what the typing pass says (:class:`Types`).
"""

from __future__ import annotations

import dataclasses

import sympy as sp
from sympy.core.mul import _keep_coeff

from ..dsl import Given, Reduction, g, idiv, imod
from ..ir import AsFloat, Copy, base
from ..ops import (
    Bin,
    BoolOp,
    Call,
    Compare,
    Expr,
    Guarded,
    IfExp,
    Kind,
    Leaf,
    Name,
    Neg,
    Not,
    Paren,
    Prec,
    Reduce,
    Value,
)
from .conditions import split
from .shape import join, shape_of

_RELATION = {"==", "!=", "<", "<=", ">", ">="}
#: sympy types whose printed form has parentheses Python would not write: built as trees, never leaves
_STRUCTURAL = (sp.Piecewise, sp.And, sp.Or, sp.Not, sp.core.relational.Relational)


@dataclasses.dataclass(frozen=True)
class Types:
    """What the typing pass knows, as the backend names things: the names that are arrays (one value per
    tensor or per element), those with one value per element, and the identifiers of rule names."""

    arrays: frozenset[str]
    elements: frozenset[str]
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    copies: bool = False  # whether the backend copies an array for ``Copy(x)`` (else ``Copy(x)`` is ``x``)
    #: the names (the rule's) that make a condition a select rather than a Python test (default: arrays)
    selects: frozenset[str] | None = None
    #: the shape of each per-element name (passes/shape.py), and the shape of the registers the statement
    #: is written into (``file``: none reduced, shaped like the tensor; a row's statement, its row's): a
    #: value of another shape is one leaf, computed whole at its own shape (a row read by a statement of
    #: the tensor's shape; the tensor's square read by a row's mean)
    shapes: dict = dataclasses.field(default_factory=dict)
    file: frozenset = frozenset()

    def other_shape(self, expr: sp.Basic) -> bool:
        if not self.shapes:
            return False
        shape = shape_of(expr, self.shapes)
        return shape is not None and shape != self.file

    @property
    def select_names(self) -> frozenset[str]:
        return self.arrays if self.selects is None else self.selects

    def is_select(self, expr: sp.Basic) -> bool:
        return any(base(s) in self.select_names for s in expr.free_symbols)

    def printed(self, symbol: sp.Symbol) -> str:
        name = base(symbol)
        return self.names.get(name, name)

    def is_array(self, expr: sp.Basic) -> bool:
        return any(base(s) in self.arrays for s in expr.free_symbols)

    def is_element(self, expr: sp.Basic) -> bool:
        return any(self.printed(s) in self.elements for s in expr.free_symbols)


def evaluation_tree(expr: sp.Basic, types: Types) -> Expr:
    """The tree Python evaluates for the printed ``expr``."""
    return _Builder(types).tree(sp.sympify(expr))


def kernel_tree(expr: sp.Basic, types: Types) -> Expr:
    """The tree of ``expr`` as scalar code in a fused kernel's loop, where ``types.elements`` are the loop's
    locals and everything else is an invariant (``hoist.py``): every sub-expression that reads no local is
    one leaf (a select, a sum's negative term, a condition included); ``x**2`` is ``(x * x)`` (NumPy's
    square); a select is Python's conditional, each branch guarded by the static conditions under which it
    is evaluated."""
    return _KernelBuilder(types).tree(sp.sympify(expr))


def leaf_precedence(expr: sp.Basic) -> Prec:
    """The precedence of the printed form of a leaf (what it needs parentheses against)."""
    if isinstance(expr, Given):
        return Prec.CMP
    if expr is sp.S.NegativeInfinity:
        return Prec.FACTOR
    if expr is sp.S.Infinity:
        return Prec.ATOM
    if expr.is_Number:
        if expr.is_negative:
            return Prec.FACTOR if expr.is_Integer or expr.is_Float or _exact(expr) else Prec.TERM
        return Prec.ATOM if expr.is_Integer or expr.is_Float or _exact(expr) else Prec.TERM
    if isinstance(expr, sp.Add):
        return Prec.ARITH
    if isinstance(expr, sp.Mul):
        c, e = expr.as_coeff_Mul()
        if c == -1 and not isinstance(e, sp.Mul) and not _has_denominator(e):
            return Prec.FACTOR  # -x, -x**2, -f(x)
        return Prec.TERM
    if isinstance(expr, sp.Pow):
        if expr.exp == sp.S.Half:
            return Prec.ATOM
        if expr.exp in (-sp.S.Half, -1) or _has_denominator(expr):
            return Prec.TERM
        return Prec.POWER
    if isinstance(expr, (idiv, imod)):
        return Prec.TERM
    if isinstance(expr, Copy):
        return leaf_precedence(expr.args[0])
    return Prec.ATOM


def _exact(r: sp.Basic) -> bool:
    """A rational the printer writes as a float literal (``0.5``), not as ``p/q``."""
    return sp.Rational(float(r)) == r


def _has_denominator(e: sp.Basic) -> bool:
    return isinstance(e, sp.Pow) and bool(e.exp.as_coeff_Mul()[0] < 0)


class _Builder:
    square = None  # how x**2 is written, where not as a power

    def __init__(self, types: Types) -> None:
        self.t = types

    def leaf(self, expr: sp.Basic) -> Leaf:
        kind = (
            Kind.ELEMENT if self.t.is_element(expr) else Kind.TENSOR if self.t.is_array(expr) else Kind.SCALAR
        )
        return Leaf(expr, kind, leaf_precedence(expr))

    def tree(self, expr: sp.Basic) -> Expr:
        if not self.t.is_element(expr) and not expr.has(*_STRUCTURAL):
            return self.leaf(expr)
        if isinstance(expr, sp.Symbol) and not isinstance(expr, Given):
            return Name(Value(self.t.printed(expr), Kind.ELEMENT))
        if self.t.other_shape(expr):  # not the registers' shape: printed whole, at its own
            return self.leaf(expr)
        method = getattr(self, f"_{type(expr).__name__}", None)
        if method is None and isinstance(expr, sp.core.relational.Relational):
            method = self._Relational
        if method is None:  # not known here: printed whole by the expression printer (an array: it allocates)
            return self.leaf(expr)
        return method(expr)

    # -- arithmetic, as the printer writes it ----------------------------------------------

    def _Add(self, expr: sp.Add) -> Expr:
        if len(expr.args) == 2:  # ExprPrinter._print_Add: `pos - neg` as the rule writes it
            a, b = expr.args
            if a.could_extract_minus_sign() != b.could_extract_minus_sign():
                pos, neg = (b, a) if a.could_extract_minus_sign() else (a, b)
                return Bin("-", self.tree(pos), self.tree(-neg))
        out: Expr | None = None
        for term in self.grouped(expr.as_ordered_terms(), sp.Add):
            negative = self.prints_negative(term)
            if out is None:
                out = self.negated_first(term) if negative else self.tree(term)
            else:
                out = Bin("-" if negative else "+", out, self.tree(-term if negative else term))
        assert out is not None
        return out

    def grouped(self, items: list[sp.Basic], combine) -> list[sp.Basic]:
        """``items`` of an n-ary sum or product, folded left to right: a leading run whose partial result has
        another shape than the registers' (a row plus a row, in a statement shaped like the tensor) is one
        item, computed whole at its own shape (``combine``: sp.Add or sp.Mul, unevaluated); so are all of
        them where the whole has another shape (a denominator that is a row: its product must not be
        written into a register of the tensor's shape, which torch would resize)."""
        if not self.t.shapes:
            return items
        before = None  # the shape of the items before the k-th
        for k, item in enumerate(items):
            shape = join(before, shape_of(item, self.t.shapes))
            if shape == self.t.file:
                break
            before = shape
        else:
            return [combine(*items, evaluate=False)] if before is not None and len(items) > 1 else items
        if before is None or k <= 1:  # numbers before it (Python values), or one item of its own
            return items
        return [combine(*items[:k], evaluate=False), *items[k:]]

    def prints_negative(self, term: sp.Basic) -> bool:
        return _prints_negative(term)

    def negated_first(self, term: sp.Basic) -> Expr:
        """A term printed with a leading minus: Python binds that minus to the term's first factor."""
        positive = self.tree(-term)
        if isinstance(positive, Leaf):
            return self.leaf(term)
        return _negate_leftmost(positive)

    def _Mul(self, expr: sp.Mul) -> Expr:
        """StrPrinter._print_Mul's numerator and denominator, as Python groups them."""
        args = expr.args
        if args[0] is sp.S.One or any(
            isinstance(a, sp.Number) or a.is_Pow and all(ai.is_Integer for ai in a.args) for a in args[1:]
        ):
            return self.unevaluated(expr)
        c, e = expr.as_coeff_Mul()
        sign = bool(c < 0)
        if sign:
            expr = _keep_coeff(-c, e)
        num: list[sp.Basic] = []
        den: list[sp.Basic] = []
        for item in expr.as_ordered_factors():
            if item.is_commutative and isinstance(item, sp.Pow) and bool(item.exp.as_coeff_Mul()[0] < 0):
                den.append(_apow(item) if item.exp is not sp.S.NegativeOne else item.base)
            elif item.is_Rational and item is not sp.S.Infinity:
                if item.p != 1:
                    num.append(sp.Rational(item.p))
                if item.q != 1:
                    den.append(sp.Rational(item.q))
            else:
                num.append(item)
        num = num or [sp.S.One]
        factors = [self.tree(x) for x in self.grouped(num, sp.Mul)]
        if sign:
            factors[0] = Neg(factors[0])
        out = _product(factors)
        if den:
            out = Bin("/", out, _product([self.tree(x) for x in self.grouped(den, sp.Mul)]))
        return out

    def unevaluated(self, expr: sp.Basic) -> Expr:
        """An unevaluated product: printed whole."""
        return self.leaf(expr)

    def _Pow(self, expr: sp.Pow) -> Expr:
        b, e = expr.args
        if e == 2 and self.square is not None:
            return self.square(b)
        if e == sp.S.Half:
            return self.call("sqrt", expr, [b])
        if e == -sp.S.Half:
            return Bin("/", self.leaf(sp.S.One), self.call("sqrt", sp.sqrt(b), [b]))
        if e == -1:
            return Bin("/", self.leaf(sp.S.One), self.tree(b))
        return Bin("**", self.tree(b), self.tree(e))

    # -- functions -------------------------------------------------------------------------

    def call(self, fn: str, expr: sp.Basic, args) -> Call:
        return Call(
            fn,
            tuple(self.tree(a) for a in args),
            self.t.is_array(expr),
            arrays=tuple(self.t.is_array(a) for a in args),
        )

    def _Abs(self, expr) -> Expr:
        return self.call("Abs", expr, expr.args)

    def _sign(self, expr) -> Expr:
        return self.call("sign", expr, expr.args)

    def _exp(self, expr) -> Expr:
        return self.call("exp", expr, expr.args)

    def _log(self, expr) -> Expr:
        return self.call("log", expr, expr.args)

    def _erf(self, expr) -> Expr:
        return self.call("erf", expr, expr.args)

    def _float32(self, expr) -> Expr:
        return self.call("float32", expr, expr.args)

    def _clip(self, expr) -> Expr:
        return self.call("clip", expr, expr.args)

    def _Broadcast(self, expr) -> Expr:  # into a register of the statement's shape
        return self.call("Copy", expr, expr.args)

    def _Copy(self, expr) -> Expr:
        (arg,) = expr.args
        if self.t.copies and self.t.is_array(arg):
            return self.call("Copy", expr, [arg])
        return self.tree(arg)

    def _TensorSum(self, expr) -> Expr:
        return Reduce("TensorSum", self.tree(expr.args[0]))

    def _axis_reduction(self, expr) -> Expr:  # over one axis, into a register of the row's (column's) shape
        if self.t.shapes and isinstance(shape_of(expr.args[0], self.t.shapes), tuple):
            return self.leaf(expr)  # over a Gram matrix's rows: printed whole, shaped as the parameter's row
        return self.call(type(expr).__name__, expr, expr.args)

    _AxisSum = _AxisMean = _AxisMax = _axis_reduction

    def _cover(self, expr) -> Expr:  # into a register of its shape; the gradient's shape lays the cover out
        return Call(
            type(expr).__name__,
            (self.tree(expr.args[0]), self.leaf(g)),
            self.t.is_array(expr),
            arrays=(True, True),
        )

    _CoverMax = _CoverMin = _cover

    def _MatrixProduct(self, expr) -> Expr:  # into a register of the product's shape
        return self.call("MatrixProduct", expr, expr.args)

    def _Transposed(self, expr) -> Expr:  # copied into a register: a view would follow its buffer
        return self.call("Transposed", expr, expr.args)

    def _TensorMax(self, expr) -> Expr:
        return Reduce("TensorMax", self.tree(expr.args[0]))

    def _TensorSize(self, expr) -> Expr:
        return Reduce("TensorSize", self.tree(expr.args[0]))

    def _chain(self, name: str, expr) -> Expr:
        """n-ary max/min as nested binary calls (ExprPrinter._binary_chain)."""
        args = list(expr.args)
        out = self.tree(args[-1])
        for i in range(len(args) - 2, -1, -1):
            rest = sp.Tuple(*args[i + 1 :])
            a_array, rest_array = self.t.is_array(args[i]), self.t.is_array(rest)
            out = Call(name, (self.tree(args[i]), out), a_array or rest_array, arrays=(a_array, rest_array))
        return out

    def _Max(self, expr) -> Expr:
        return self._chain("Max", expr)

    def _Min(self, expr) -> Expr:
        return self._chain("Min", expr)

    # -- selects and conditions (ExprPrinter.choice, _logic) -----------------------------------

    def _Piecewise(self, expr) -> Expr:
        pieces = list(expr.args)
        if pieces[-1][1] is not sp.true:
            return self.leaf(expr)  # the printer names the error
        out = self.tree(pieces[-1][0])
        for value, cond in reversed(pieces[:-1]):
            out = self.choice(cond, self.tree(value), out)
        return out

    def split(self, cond) -> tuple:
        return split(cond, self.t.select_names)

    def choice(self, cond, value: Expr, other: Expr) -> Expr:
        if isinstance(cond, sp.Or) and self.t.is_select(cond):
            static = [c for c in cond.args if not self.t.is_select(c)]
            if static:
                dynamic = sp.Or(*[c for c in cond.args if self.t.is_select(c)])
                return IfExp(self.tree(sp.Or(*static)), value, self.choice(dynamic, value, other))
        static, dynamic = self.split(cond)
        if dynamic is not sp.true:
            inner = Call("where", (self.tree(dynamic), value, other), True)
            return inner if static is sp.true else IfExp(self.tree(static), inner, other)
        return IfExp(self.tree(static), value, other)

    def _Relational(self, expr) -> Expr:
        if expr.rel_op not in _RELATION:
            return self.leaf(expr)
        return Compare(self.tree(expr.lhs), expr.rel_op, self.tree(expr.rhs))

    def _logic(self, expr, fn: str, word: str) -> Expr:
        static = [self.tree(a) for a in expr.args if not self.t.is_array(a)]
        arrays = [self.tree(a) for a in expr.args if self.t.is_array(a)]
        if arrays:
            out = arrays[0]
            for p in arrays[1:]:
                out = Call(fn, (out, p), True)
            static.append(out)
        return static[0] if len(static) == 1 else BoolOp(word, tuple(static))

    def _And(self, expr) -> Expr:
        return self._logic(expr, "and", "and")

    def _Or(self, expr) -> Expr:
        return self._logic(expr, "or", "or")

    def _Not(self, expr) -> Expr:
        (arg,) = expr.args
        if isinstance(arg, Given):
            return self.leaf(expr)
        if self.t.is_array(expr):
            return Call("not", (self.tree(arg),), True)
        return Not(self.tree(arg))

    def _BooleanTrue(self, expr) -> Expr:
        return self.leaf(expr)

    _BooleanFalse = _BooleanTrue


def _prints_negative(term: sp.Basic) -> bool:
    """Whether the printer writes the term with a leading minus (StrPrinter._print_Add's test)."""
    if term.is_Number or term is sp.S.NegativeInfinity:
        return bool(term.is_negative)
    if isinstance(term, sp.Mul):
        return bool(term.as_coeff_Mul()[0] < 0)
    return False


def _negate_leftmost(e: Expr) -> Expr:
    """``-`` written before the printed ``e``: it negates the leftmost factor of a product or quotient."""
    if isinstance(e, Bin) and e.op in ("*", "/"):
        return Bin(e.op, _negate_leftmost(e.a), e.b)
    return Neg(e)


def _product(factors: list[Expr]) -> Expr:
    out = factors[0]
    for f in factors[1:]:
        out = Bin("*", out, f)
    return out


def _apow(item: sp.Pow) -> sp.Basic:
    """A power with a negative exponent, written below the fraction bar (StrPrinter._print_Mul's apow)."""
    b, e = item.as_base_exp()
    eargs = list(sp.Mul.make_args(e))
    if eargs[0] is sp.S.NegativeOne:
        eargs = eargs[1:]
    else:
        eargs[0] = -eargs[0]
    e = sp.Mul._from_args(eargs)
    return item.func(b, e, evaluate=False)


class _KernelBuilder(_Builder):
    """The fused kernels' printer: scalar code, every sub-expression without a local an invariant."""

    def _Upcast(self, expr) -> Expr:  # the element, in the kernel's dtype
        return self.tree(expr.args[0])

    def _Pow(self, expr: sp.Pow) -> Expr:
        """A power of one half written as a float (``v**-0.5``, optax's Adafactor) is a square root, as the
        rational one is: Triton has no power of a block (the interpreter none at all)."""
        b, e = expr.args
        if isinstance(e, sp.Float) and abs(float(e)) == 0.5:
            return super()._Pow(sp.Pow(b, sp.S.Half if e > 0 else -sp.S.Half, evaluate=False))
        return super()._Pow(expr)

    def tree(self, expr: sp.Basic) -> Expr:
        if not self.t.is_element(expr):
            return self.leaf(expr)
        if isinstance(expr, sp.Symbol) and not isinstance(expr, Given):
            return Name(Value(self.t.printed(expr), Kind.ELEMENT))
        method = getattr(self, f"_{type(expr).__name__}", None)
        if method is None and isinstance(expr, sp.core.relational.Relational):
            method = self._Relational
        if method is None or isinstance(expr, (Reduction, AsFloat)):
            raise NotImplementedError(f"{type(expr).__name__} in a fused kernel: {expr}")
        return method(expr)

    def prints_negative(self, term: sp.Basic) -> bool:
        return self.t.is_element(term) and _prints_negative(term)  # an invariant is read as it is

    def unevaluated(self, expr: sp.Basic) -> Expr:
        raise NotImplementedError(f"an unevaluated product in a fused kernel: {expr}")

    def square(self, b: sp.Basic) -> Expr:
        x = self.tree(b)
        return Paren(Bin("*", x, x))  # NumPy's x**2 is x*x

    def _Piecewise(self, expr) -> Expr:
        pieces = list(expr.args)
        if pieces[-1][1] is not sp.true:
            raise NotImplementedError(f"a select without an otherwise-branch: {expr}")
        branches = []
        before: list[sp.Basic] = []  # the earlier pieces' conditions (the value is taken where they fail)
        all_static = True
        for value, cond in pieces:
            if cond is not sp.true:
                parts = cond.args if isinstance(cond, sp.And) else (cond,)
                static = tuple(c for c in parts if not self.t.is_element(c))
                guards = static + tuple(sp.Not(c) for c in before)
                test = Guarded(self.tree(cond), guards)
                all_static = all_static and not self.t.is_element(cond)
                before.append(cond)
            else:
                test = None
                guards = tuple(sp.Not(c) for c in before) if all_static else ()
            branches.append((Guarded(self.tree(value), guards), test))
        out = branches[-1][0]
        for value, test in reversed(branches[:-1]):
            out = Paren(IfExp(test, value, out))
        return out

    def _logic(self, expr, fn: str, word: str) -> Expr:
        return Paren(BoolOp(word, tuple(self.tree(a) for a in expr.args)))

    def _Not(self, expr) -> Expr:
        return Paren(Not(self.tree(expr.args[0])))

    def _clip(self, expr) -> Expr:
        return Call("clip", tuple(self.tree(a) for a in expr.args), True)
