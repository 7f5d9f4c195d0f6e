"""The strict expression printer that every backend's printer subclasses.

A backend printer is a table: how to call each supported function on an array
and on a plain Python scalar (the step, the hyperparameters). Whether a node
is an array is known from the names it reads (``arrays``), so ``max(a, b)``
prints as ``max(a, b)`` on scalars and ``np.maximum(a, b)`` on arrays.
Anything not in the table is a :class:`BackendError` naming the node and the
backend: nothing is printed half-way. The printer records the modules it used.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.relational import Relational
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from optforge.compiler.dsl import Given
from optforge.compiler.errors import BackendError
from optforge.compiler.ir import base

_RELATION = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class ExprPrinter(StrPrinter):
    backend = ""
    #: sympy function name -> (array call, scalar call); "" means: not supported for that kind
    functions: dict[str, tuple[str, str]] = {}
    where_call = ""  # element-wise select: where(cond, a, b)
    and_call = ""  # element-wise logical and / or / not on arrays
    or_call = ""
    not_call = ""

    def __init__(self, rule: str, arrays: set[str], names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.arrays = arrays
        self.names = names or {}
        self.modules: set[str] = set()
        self.elements: set[str] = set()  # names of per-element arrays

    # -- helpers -----------------------------------------------------------------------

    def is_array(self, expr: sp.Basic) -> bool:
        return any(base(s) in self.arrays for s in expr.free_symbols)

    def fail(self, expr: sp.Basic):
        raise BackendError(self.rule, self.backend, f"{type(expr).__name__}: {sp.sstr(expr)}")

    def call(self, fn: str, *args: str) -> str:
        if "." in fn:
            self.modules.add(fn.rsplit(".", 1)[0])
        return f"{fn}({', '.join(args)})"

    def function(self, name: str, expr: sp.Basic, args) -> str:
        array_fn, scalar_fn = self.functions.get(name, ("", ""))
        fn = array_fn if self.is_array(expr) else scalar_fn
        if not fn:
            self.fail(expr)
        return self.call(fn, *[self._print(a) for a in args])

    def name_of(self, symbol: sp.Symbol) -> str:
        name = base(symbol)
        return self.names.get(name, name)

    # -- atoms -------------------------------------------------------------------------

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        if isinstance(expr, Given):
            return f"{self.names.get(expr.option, expr.option)} is not None"
        return self.name_of(expr)

    def _print_idiv(self, expr) -> str:
        a, b = expr.args
        return f"{self.parenthesize(a, PRECEDENCE['Mul'])} // {self.parenthesize(b, PRECEDENCE['Mul'] + 1)}"

    def _print_imod(self, expr) -> str:
        a, b = expr.args
        return f"{self.parenthesize(a, PRECEDENCE['Mul'])} % {self.parenthesize(b, PRECEDENCE['Mul'] + 1)}"

    def _print_Dummy(self, expr) -> str:
        self.fail(expr)

    def _print_Integer(self, expr) -> str:
        return str(int(expr))

    def _print_Rational(self, expr) -> str:
        value = float(expr)
        return repr(value) if sp.Rational(value) == expr else f"{expr.p}/{expr.q}"

    def _print_Half(self, expr) -> str:
        return "0.5"

    def _print_Float(self, expr) -> str:
        return repr(float(expr))

    def _print_Infinity(self, expr) -> str:
        self.modules.add("math")
        return "math.inf"

    def _print_NegativeInfinity(self, expr) -> str:
        self.modules.add("math")
        return "-math.inf"

    def _print_BooleanTrue(self, expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr) -> str:
        return "False"

    # -- arithmetic --------------------------------------------------------------------

    def _print_Add(self, expr, order=None) -> str:
        """A sum of two terms, one negative, as the rule writes it: ``1 - a*b`` (SymPy's default prints
        ``-a*b + 1``); the same value to the bit (a + b is b + a, and negation is exact). Other sums keep
        SymPy's order, which decides how they round."""
        if len(expr.args) == 2:
            a, b = expr.args
            if a.could_extract_minus_sign() != b.could_extract_minus_sign():
                pos, neg = (b, a) if a.could_extract_minus_sign() else (a, b)
                prec = PRECEDENCE["Add"]
                return f"{self.parenthesize(pos, prec)} - {self.parenthesize(-neg, prec)}"
        return super()._print_Add(expr, order=order)

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        b, e = expr.args
        if e == sp.S.Half:
            return self.function("sqrt", expr, [b])
        if e == -sp.S.Half:
            return "1/" + self.function("sqrt", sp.sqrt(b), [b])
        if e == -1:
            return "1/" + self.parenthesize(b, PRECEDENCE["Pow"])
        return f"{self.parenthesize(b, PRECEDENCE['Pow'], strict=False)}**{self.parenthesize(e, PRECEDENCE['Pow'], strict=False)}"

    def _print_Abs(self, expr) -> str:
        return self.function("Abs", expr, expr.args)

    def _print_sign(self, expr) -> str:
        if not self.is_array(expr):
            x = self._print(expr.args[0])
            return f"((({x}) > 0) - (({x}) < 0))"
        return self.function("sign", expr, expr.args)

    def _print_Copy(self, expr) -> str:
        """An array copied where the table has a copy (the in-place backends); anything else is a value."""
        array_fn = self.functions.get("Copy", ("", ""))[0]
        (arg,) = expr.args
        if array_fn and self.is_array(arg):
            return self.call(array_fn, self._print(arg))
        return self._print(arg)

    def _print_TensorSum(self, expr) -> str:
        return self.function("TensorSum", expr, expr.args)

    def _print_TensorMax(self, expr) -> str:
        return self.function("TensorMax", expr, expr.args)

    def _print_erf(self, expr) -> str:
        return self.function("erf", expr, expr.args)

    def _print_exp(self, expr) -> str:
        return self.function("exp", expr, expr.args)

    def _print_log(self, expr) -> str:
        return self.function("log", expr, expr.args)

    def _binary_chain(self, name: str, expr) -> str:
        """n-ary max/min as nested binary calls, each printed for the kinds of its two sides."""
        args = list(expr.args)
        out = self._print(args[-1])
        for i in range(len(args) - 2, -1, -1):
            out = self.minmax(name, args[i], sp.Tuple(*args[i + 1 :]), out)
        return out

    def minmax(self, name: str, a: sp.Basic, rest: sp.Basic, printed_rest: str) -> str:
        array_fn, scalar_fn = self.functions[name]
        fn = array_fn if self.is_array(a) or self.is_array(rest) else scalar_fn
        return self.call(fn, self._print(a), printed_rest)

    def _print_Max(self, expr) -> str:
        return self._binary_chain("Max", expr)

    def _print_Min(self, expr) -> str:
        return self._binary_chain("Min", expr)

    def _print_clip(self, expr) -> str:
        if not self.is_array(expr):
            x, lo, hi = (self._print(a) for a in expr.args)
            return f"min(max({x}, {lo}), {hi})"
        return self.function("clip", expr, expr.args)

    def _print_Piecewise(self, expr) -> str:
        pieces = list(expr.args)
        if pieces[-1][1] is not sp.true:
            self.fail(expr)  # a Piecewise without an otherwise-branch has no value somewhere
        out = self._print(pieces[-1][0])
        for value, cond in reversed(pieces[:-1]):
            out = self.choice(cond, self._print(value), out)
        return out

    def split(self, cond) -> tuple:
        """(static, dynamic) parts of a conjunction: Python values, and arrays (data or a traced step)."""
        parts = cond.args if isinstance(cond, sp.And) else (cond,)
        static = [c for c in parts if not self.is_array(c)]
        dynamic = [c for c in parts if self.is_array(c)]
        return sp.And(*static), sp.And(*dynamic)

    def choice(self, cond, value: str, other: str) -> str:
        """``value`` where ``cond`` holds, else ``other``: a Python conditional for static parts (so the
        branch not taken is never evaluated), an element-wise select for the array parts."""
        if isinstance(cond, sp.Or) and self.is_array(cond):
            static = [c for c in cond.args if not self.is_array(c)]
            if static:  # static or dynamic: the static part first
                dynamic = sp.Or(*[c for c in cond.args if self.is_array(c)])
                return f"({value} if {self._print(sp.Or(*static))} else {self.choice(dynamic, value, other)})"
        static, dynamic = self.split(cond)
        if dynamic is not sp.true:
            inner = self.call(self.where_call, self._print(dynamic), value, other)
            return inner if static is sp.true else f"({inner} if {self._print(static)} else {other})"
        return f"({value} if {self._print(static)} else {other})"

    # -- conditions --------------------------------------------------------------------

    def _print_Relational(self, expr: Relational) -> str:
        op = _RELATION.get(expr.rel_op)
        if op is None:
            self.fail(expr)
        prec = PRECEDENCE["Relational"]
        return f"{self.parenthesize(expr.lhs, prec)} {op} {self.parenthesize(expr.rhs, prec)}"

    _print_Equality = _print_Relational
    _print_Unequality = _print_Relational
    _print_StrictGreaterThan = _print_Relational
    _print_StrictLessThan = _print_Relational
    _print_GreaterThan = _print_Relational
    _print_LessThan = _print_Relational

    def _logic(self, expr, array_fn: str, word: str) -> str:
        """Python's and/or on static parts (first, so they short-circuit), the array function on the rest."""
        static = [self._print(a) for a in expr.args if not self.is_array(a)]
        arrays = [self._print(a) for a in expr.args if self.is_array(a)]
        if arrays:
            if not array_fn:
                self.fail(expr)
            out = arrays[0]
            for p in arrays[1:]:
                out = self.call(array_fn, out, p)
            static.append(out)
        return static[0] if len(static) == 1 else "(" + f" {word} ".join(static) + ")"

    def _print_And(self, expr) -> str:
        return self._logic(expr, self.and_call, "and")

    def _print_Or(self, expr) -> str:
        return self._logic(expr, self.or_call, "or")

    def _print_Not(self, expr) -> str:
        (arg,) = expr.args
        if isinstance(arg, Given):
            return f"{self.names.get(arg.option, arg.option)} is None"
        if self.is_array(expr):
            return self.call(self.not_call, self._print(expr.args[0]))
        return f"not {self.parenthesize(expr.args[0], PRECEDENCE['Not'])}"

    # -- everything else is an error ---------------------------------------------------

    def _print_Function(self, expr) -> str:
        self.fail(expr)

    def _print_Basic(self, expr) -> str:
        self.fail(expr)

    def emptyPrinter(self, expr) -> str:
        self.fail(expr)
