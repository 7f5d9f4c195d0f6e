"""The strict expression printer that every backend's printer subclasses.

A backend printer is a table: how to call each supported function on an array
and on a plain Python scalar (the step, the hyperparameters). Whether a node
is an array is known from the names it reads (``arrays``), so ``max(a, b)``
prints as ``max(a, b)`` on scalars and ``np.maximum(a, b)`` on arrays.
Anything not in the table is a :class:`BackendError` naming the node and the
backend: nothing is printed half-way. The printer records the modules it used.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.core.relational import Relational
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from optforge.compiler import ops
from optforge.compiler.dsl import Given
from optforge.compiler.errors import BackendError
from optforge.compiler.ir import base
from optforge.compiler.passes import conditions
from optforge.compiler.passes.shape import shape_of
from optforge.compiler.passes.shape import suffix as shape_suffix
from optforge.compiler.render import RuleOrder

_RELATION = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class ExprPrinter(RuleOrder, StrPrinter):
    backend = ""
    #: sympy function name -> (array call, scalar call); "" means: not supported for that kind
    functions: dict[str, tuple[str, str]] = {}
    where_call = ""  # element-wise select: where(cond, a, b)
    and_call = ""  # element-wise logical and / or / not on arrays
    or_call = ""
    not_call = ""
    #: whether a condition on per-tensor values is tested in Python (``a if c else b``: the branch not taken
    #: is never computed, so ``wn / gn`` where ``gn > 0`` cannot divide by zero), as NumPy can: its values
    #: are at hand. Elsewhere (a torch 0-d tensor would synchronise a device; JAX traces) only conditions
    #: on Python values are, and one on arrays of any scope is a select
    tests_per_tensor_values = False

    def __init__(self, rule: str, arrays: set[str], names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.arrays = arrays
        #: the names (the rule's) that make a condition a select rather than a Python test: every array,
        #: or only the per-element ones (``tests_per_tensor_values``; set by the backend's make_printer)
        self.selects: set[str] = arrays
        self.names = names or {}
        self.modules: set[str] = set()
        self.elements: set[str] = set()  # names of per-element arrays
        #: the shape of each per-element name (passes/shape.py: a row, a column), and the reductions that
        #: are Python numbers (the rank): the registers a statement takes, and which are never buffers
        self.shapes: dict = {}
        self.numbers: set[str] = set()
        self.narrow: set[str] = set()  # arrays stored in a dtype of their own (a state's mu_dtype)
        #: the scratch registers of the pass over the tensors being printed (passes/three_address.py), set
        #: by the backend for each such pass; None outside one (statements are printed as they are)
        self.registers: Any = None
        #: the reductions over one tensor that a pass before the loop computed (``tensor_prepass``): their
        #: names and their places in the pass's tuple, read from it where it ran
        self.prepassed: dict[str, int] = {}

    # -- helpers -----------------------------------------------------------------------

    def is_array(self, expr: sp.Basic) -> bool:
        return any(base(s) in self.arrays for s in expr.free_symbols)

    def is_select(self, expr: sp.Basic) -> bool:
        """Whether a condition reads a name that makes it a select rather than a Python test (``selects``)."""
        return conditions.reads_array(expr, self.selects)

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

    def _print_Str(self, expr) -> str:  # a choice's value (``variant == "sps+"``): a Python string
        return repr(expr.name)

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

    def _print_float32(self, expr) -> str:
        return self.function("float32", expr, expr.args)

    def _print_TensorSize(self, expr) -> str:
        return self.function("TensorSize", expr, expr.args)

    def _print_Unused(self, expr) -> str:  # the branch where nothing reads the name (passes/shape_guards.py)
        return "None"

    def _print_Broadcast(self, expr) -> str:  # broadcast where it is read (where it is not copied)
        return self._print(expr.args[0])

    def _print_Upcast(self, expr) -> str:
        return self.function("Upcast", expr, expr.args)

    def _print_TensorRank(self, expr) -> str:
        return self.function("TensorRank", expr, expr.args)

    def _print_MachineEpsilon(self, expr) -> str:
        return self.function("MachineEpsilon", expr, expr.args)

    def _print_TensorRows(self, expr) -> str:
        return self.function("TensorRows", expr, expr.args)

    # the axes a tensor's lengths choose, and those lengths: Python numbers from its shape, in every backend
    def _print_AxisBySize(self, expr) -> str:
        return f"common.axis_by_size({self.name_of(sp.Symbol('w'))}.shape, {expr.rank_by_size})"

    def _print_LargestLength(self, expr) -> str:
        return f"common.largest_length({self._print(expr.args[0])}.shape)"

    def _print_SecondLargestLength(self, expr) -> str:
        return f"common.second_largest_length({self._print(expr.args[0])}.shape)"

    def _print_TensorCols(self, expr) -> str:
        return self.function("TensorCols", expr, expr.args)

    def _print_matrix_op(self, expr) -> str:
        """A matrix operation: the table's call (by the class's name) on its operands; a result shaped like
        the parameter, or like it with axes reduced, is given the parameter and that shape's scope (a
        vector's ``1 x n`` product is a vector again: ``runtime.common.state_shape``)."""
        shape = shape_of(expr, self.shapes) if self.shapes else None
        like = self.like(shape) if isinstance(shape, frozenset) else []
        return self.call(
            self.array_function(expr), *[self._print(a) for a in expr.args], *like[: 2 if shape else 1]
        )

    _print_MatrixProduct = _print_Transposed = _print_matrix_op

    def _print_axis_reduction(self, expr) -> str:
        """``tensor_sum(x, axis=-1)``: the table's call (by the class's name) on the value and the axis; over
        a matrix operation's value (a Gram matrix's rows), given the parameter and the result's scope where
        the result is the parameter's row or column (a vector's ``1 x 1`` mean is its ``(1,)`` row)."""
        inner = shape_of(expr.args[0], self.shapes) if self.shapes else None
        shape = shape_of(expr, self.shapes) if isinstance(inner, tuple) else None
        if not isinstance(shape, frozenset):
            return self.function(type(expr).__name__, expr, expr.args)
        like, scope = self.like(shape)
        return self.call(
            self.array_function(expr), *[self._print(a) for a in expr.args], f"like={like}", f"scope={scope}"
        )

    def like(self, shape: frozenset) -> list[str]:
        """The parameter and the scope of ``shape`` (``runtime.common.state_shape``), printed: what a helper
        reshapes a matrix operation's result to, where it is the parameter's shape or a row or column of it."""
        return [self.name_of(sp.Symbol("w")), repr("element" + shape_suffix(shape))]

    def array_function(self, expr: sp.Basic) -> str:
        """The table's array call for ``expr``'s class (a BackendError where the table has none)."""
        fn = self.functions.get(type(expr).__name__, ("", ""))[0]
        if not fn:
            self.fail(expr)
        return fn

    # SymPy finds a printing method by the class's own name, not a base class's
    _print_AxisSum = _print_AxisMean = _print_AxisMax = _print_axis_reduction

    def _print_cover(self, expr) -> str:
        """``cover_max(x)``, ``cover_min(mu)``: the table's call on the value and the gradient (whose shape,
        the parameter's, lays out the cover: ``runtime.common.cover_slices``; JAX's update may have no
        parameters)."""
        return self.call(self.array_function(expr), self._print(expr.args[0]), self.name_of(sp.Symbol("g")))

    _print_CoverMax = _print_CoverMin = _print_cover

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
        arrays = (self.is_array(a), self.is_array(rest))
        return self.call_text(name, any(arrays), [self._print(a), printed_rest], arrays)

    def call_text(self, fn: str, array: bool, args: list[str], arrays: tuple[bool, ...] = ()) -> str:
        """The call of a function of the table (or ``where``, ``and``, ``or``, ``not``) on printed arguments:
        its array form or its scalar form; ``arrays``: which arguments are arrays."""
        logic = {"where": self.where_call, "and": self.and_call, "or": self.or_call, "not": self.not_call}
        name = logic[fn] if fn in logic else self.functions.get(fn, ("", ""))[0 if array else 1]
        if not name:
            raise BackendError(self.rule, self.backend, f"{fn} on {'arrays' if array else 'numbers'}")
        return self.call(name, *args)

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
        """(static, dynamic) parts of a conjunction: Python values, and arrays (passes/conditions.py)."""
        return conditions.split(cond, self.selects)

    def choice(self, cond, value: str, other: str) -> str:
        """``value`` where ``cond`` holds, else ``other``: a Python conditional for static parts (so the
        branch not taken is never evaluated), an element-wise select for the array parts."""
        if isinstance(cond, sp.Or) and self.is_select(cond):
            static = [c for c in cond.args if not self.is_select(c)]
            if static:  # static or dynamic: the static part first
                dynamic = sp.Or(*[c for c in cond.args if self.is_select(c)])
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
        """Python's and/or on static parts (first, so they short-circuit; whether an option is given before
        them, as a test of the option reads it), the array function on the rest."""

        def given(a) -> bool:
            return isinstance(a, Given) or (isinstance(a, sp.Not) and isinstance(a.args[0], Given))

        ordered = sorted(expr.args, key=lambda a: not given(a))  # stable: sympy's order otherwise
        static = [self._print(a) for a in ordered if not self.is_select(a)]
        arrays = [self._print(a) for a in expr.args if self.is_select(a)]
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
        if self.is_select(expr):
            return self.call(self.not_call, self._print(expr.args[0]))
        return f"not {self.parenthesize(expr.args[0], PRECEDENCE['Not'])}"

    # -- everything else is an error ---------------------------------------------------

    def _print_Function(self, expr) -> str:
        self.fail(expr)

    def _print_Basic(self, expr) -> str:
        self.fail(expr)

    def emptyPrinter(self, expr) -> str:
        self.fail(expr)


class OpPrinter:
    """Prints the operation IR (``compiler/ops.py``) with a backend's table: one format per operation
    (``"*": "np.multiply({0}, {1}, out={out})"``; a row ``"Max/array,scalar"`` where the backend writes a
    call on an array and a number otherwise), its in-place ``forms``, and the expression printer for leaves
    and calls. It prints what the IR says, in Python's precedence: nothing is inferred here."""

    def __init__(
        self,
        p: ExprPrinter,
        table: dict[str, str],
        forms: dict[str, str],
        values: dict[str, str] | None = None,
    ) -> None:
        self.p = p
        self.table = table
        self.forms = forms
        self.values = values or {}  # a value's name -> what it is printed as (the fused kernels' calls)

    def row(self, op: str, arrays: tuple[bool, ...] = ()) -> str:
        signature = ",".join("array" if a else "scalar" for a in arrays)
        for key in (f"{op}/{signature}", op):
            if key in self.table:
                return self.table[key]
        raise BackendError(self.p.rule, self.p.backend, f"the operation {op!r} (no row in the table)")

    # -- expressions ---------------------------------------------------------------------------

    def expr(self, e: ops.Expr, context: int = ops.Prec.TEST) -> str:
        text, prec = self._expr(e)
        return f"({text})" if context > prec else text

    def _expr(self, e: ops.Expr) -> tuple[str, int]:
        P = ops.Prec
        if isinstance(e, ops.Name):
            return self.values.get(e.value.name, e.value.name), P.ATOM
        if isinstance(e, ops.Leaf):
            return self.p.doprint(e.expr), e.prec
        if isinstance(e, ops.Bin):
            prec = _BINARY[e.op]
            left, right = (prec + 1, prec) if e.op == "**" else (prec, prec + 1)
            return f"{self.expr(e.a, left)} {e.op} {self.expr(e.b, right)}", prec
        if isinstance(e, ops.Neg):
            return f"-{self.expr(e.a, P.FACTOR)}", P.FACTOR
        if isinstance(e, ops.Minus):
            return f"-({self.expr(e.a)})", P.FACTOR
        if isinstance(e, ops.Not):
            return f"not {self.expr(e.a, P.NOT)}", P.NOT
        if isinstance(e, ops.Call):
            return self.p.call_text(e.fn, e.array, [self.expr(a) for a in e.args], e.arrays), P.ATOM
        if isinstance(e, ops.Reduce):
            return self.p.call_text(e.fn, True, [self.expr(e.arg)]), P.ATOM
        if isinstance(e, ops.IfExp):
            body, test = self.expr(e.body, P.TEST + 1), self.expr(e.test, P.TEST + 1)
            return f"{body} if {test} else {self.expr(e.orelse, P.TEST)}", P.TEST
        if isinstance(e, ops.Compare):
            return f"{self.expr(e.a, P.CMP + 1)} {e.op} {self.expr(e.b, P.CMP + 1)}", P.CMP
        if isinstance(e, ops.BoolOp):
            prec = P.AND if e.op == "and" else P.OR
            return f" {e.op} ".join(self.expr(v, prec + 1) for v in e.values), prec
        if isinstance(e, ops.Paren):
            return f"({self.expr(e.a)})", P.ATOM
        if isinstance(e, ops.Guarded):
            return self._expr(e.a)
        raise BackendError(self.p.rule, self.p.backend, f"the expression {e!r}")

    # -- statements ----------------------------------------------------------------------------

    def statements(self, body: tuple[ops.Stmt, ...]) -> list[str]:
        return [line for s in body for line in self.statement(s)]

    def statement(self, s: ops.Stmt) -> list[str]:
        if isinstance(s, ops.Op):
            args = [self.expr(a) for a in s.args]
            keywords = {k: self.expr(v) for k, v in s.keywords}
            row = self.row(s.op, s.arrays)
            if s.mask is not None and "{where}" not in row:
                raise BackendError(self.p.rule, self.p.backend, f"the operation {s.op!r} under a mask")
            where = "" if s.mask is None else f", where={self.expr(s.mask)}"
            code = row.format(*args, out=s.out.name, where=where, **keywords)
            return [f"{s.bind} = {code}" if s.bind else code]
        if isinstance(s, ops.CopyInto):
            return [self.row("copy_into").format(self.expr(s.x), out=s.out.name)]
        if isinstance(s, ops.Bind):
            value = self.row("duplicate").format(self.expr(s.value)) if s.duplicate else self.expr(s.value)
            return [f"{s.name} = {value}"]
        if isinstance(s, ops.Update):
            return [self.forms[s.form].format(name=s.target, value=self.expr(s.value))]
        if isinstance(s, ops.Compound):
            row = f"inplace_{s.method}" + ("" if s.scale is None else "_scaled")
            scale = "" if s.scale is None else self.expr(s.scale)
            return [self.row(row).format(*[self.expr(a) for a in s.args], target=s.target, scale=scale)]
        if isinstance(s, ops.If):
            test = self.expr(s.test)
            head = f"if not ({test}):" if s.negated else f"if {test}:"
            out = [head] + ["    " + line for line in self.statements(s.body)]
            if s.orelse:
                out += ["else:"] + ["    " + line for line in self.statements(s.orelse)]
            return out
        raise BackendError(self.p.rule, self.p.backend, f"the statement {s!r}")


_BINARY = {
    "+": ops.Prec.ARITH,
    "-": ops.Prec.ARITH,
    "*": ops.Prec.TERM,
    "/": ops.Prec.TERM,
    "**": ops.Prec.POWER,
}


class ShapeTestPrinter(StrPrinter):
    """A test of a tensor's shape (``StateVar.kept``: ``Ne(rank, 2)``) as Python over the shape tuple, the
    same in every backend: ``runtime.common``'s ``rank``, ``rows``, ``cols`` and ``size`` of ``shape``; the
    hyperparameters it reads (flags, integers, whether an option is given) by their names."""

    _FUNCTIONS = {
        "TensorRank": "rank",
        "TensorRows": "rows",
        "TensorCols": "cols",
        "TensorSize": "size",
        "LargestLength": "largest_length",
        "SecondLargestLength": "second_largest_length",
    }

    def _print_Function(self, expr) -> str:
        name = self._FUNCTIONS.get(type(expr).__name__)
        if name is None:
            raise ValueError(f"a test of a tensor's shape reads {expr}, which is not its shape")
        return f"common.{name}(shape)"

    def _print_Symbol(self, expr) -> str:  # a flag, an integer hyperparameter, whether an option is given
        return f"{expr.option} is not None" if isinstance(expr, Given) else expr.name

    def _print_Str(self, expr) -> str:  # a choice's value
        return repr(expr.name)

    def _print_Relational(self, expr) -> str:
        lhs, rhs = (self.parenthesize(a, PRECEDENCE["Relational"] + 1) for a in expr.args)
        return f"{lhs} {_RELATION[expr.rel_op]} {rhs}"

    def _print_And(self, expr) -> str:
        return " and ".join(self.parenthesize(a, PRECEDENCE["And"] + 1) for a in expr.args)

    def _print_Or(self, expr) -> str:
        return " or ".join(self.parenthesize(a, PRECEDENCE["Or"] + 1) for a in expr.args)

    def _print_Not(self, expr) -> str:
        if isinstance(expr.args[0], Given):  # an option not given
            return f"{expr.args[0].option} is None"
        return f"not {self.parenthesize(expr.args[0], PRECEDENCE['Not'] + 1)}"
