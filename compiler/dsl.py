"""The rule DSL: an optimizer written once, as it reads in its paper.

A rule declares hyperparameters (with default, valid range and meaning),
boolean flags, state (with initial value) and the update equations in order::

    rule = Rule("Adamax", title="Adamax (Keras 3)")
    lr = rule.learning_rate(0.001)
    beta_1 = rule.hyper("beta_1", 0.9, "[0, 1)", "decay rate of the first moment")
    m = rule.state("m", 0, "first moment")
    rule.assign(m, m + (1 - beta_1) * (g - m), "first moment")
    rule.assign(w, w - lr * m, "parameter update")

Assignments are sequential: an equation sees the values that the equations
above it produced; a state that is read before it is assigned in a step has
the value of the previous step.  ``g`` is the gradient of one parameter tensor,
``w`` the tensor, ``t`` the 1-based step.

A variant derives from a rule without copying it::

    AdamaxEpsInMax = Adamax.derive("AdamaxEpsInMax", title=...)
    AdamaxEpsInMax.replace(u, maximum(beta_2 * u, abs(g) + epsilon))
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import keyword
import math
import os
import re
import sys
from typing import Any

import sympy as sp
from sympy.core.symbol import Str

from ..runtime import common
from ..runtime.common import Interval
from .errors import RuleError

__all__ = [
    "erf",
    "Eq",
    "Given",
    "Ne",
    "idiv",
    "imod",
    "n",
    "rank",
    "rows",
    "cols",
    "largest_axis",
    "second_largest_axis",
    "largest_length",
    "second_largest_length",
    "Rule",
    "clip",
    "cover_max",
    "cover_min",
    "exp",
    "float32",
    "g",
    "global_max",
    "global_norm",
    "global_sum",
    "global_sumsq",
    "log",
    "loss",
    "machine_epsilon",
    "matmul",
    "maximum",
    "minimum",
    "sign",
    "size",
    "sqrt",
    "t",
    "tensor_max",
    "tensor_mean",
    "tensor_norm",
    "tensor_sum",
    "tensor_sumsq",
    "transpose",
    "w",
    "where",
]

#: The gradient of the current parameter tensor.
g = sp.Symbol("g")
#: The current parameter tensor.
w = sp.Symbol("w")
#: The 1-based step: 1 at the first update.
t = sp.Symbol("t")
#: The number of earlier calls of the step (0 at the first): what learning-rate schedules see.
n = sp.Symbol("n")
#: The value of the objective at this step, which the user passes to the step (optax's ``value=``, torch's
#: ``step(closure)``): Polyak's step size reads it. A rule that reads it takes it in every backend.
loss = sp.Symbol("loss")

RESERVED = {"g", "w", "t", "n", "loss"}

# Names the generated code uses for itself (NumPy, JAX, torch, the Numba and Triton kernels); a rule may
# not take them: a let named ``key`` was overwritten by NumPy's loop over the tensors, silently (the kernels'
# own names end in ``_``: ``mask_``, ``lo_``, ``hi_``, ``row_``). tests/test_compiler.py holds this list to
# every name bound in the generated modules.
_TAKEN = frozenset(
    {
        # modules and runtime helpers
        *("np", "jnp", "jax", "torch", "math", "optax", "numba", "triton", "tl", "functools"),
        *("annotations", "common", "options", "options_jax", "options_numpy", "options_torch"),
        *("numpy_support", "jax_support", "torch_support", "fused_support", "triton_support"),
        *("cacheable", "pointer", "machine_epsilon", "fmax", "fmin", "fsign", "fsqrt"),
        # the optimizers' and the update functions' own names
        *("self", "state", "group", "params", "grads", "update", "updates", "count", "step", "closure"),
        *(
            "loss",
            "value",
            "extra_args",
            "lr",
            "treedef",
            "keys",
            "key",
            "call",
            "init",
            "init_fn",
            "update_fn",
            "stages",
            "shape",
        ),
        *("defaults", "checks", "flags", "keeps", "tensors", "module", "rule", "out"),
        *("fused", "foreach", "capturable", "differentiable", "state_dtype", "global_states"),
        *(
            "global_sumsq_g",
            "kernels_refused",
            "whole_tensors",
            "torch_names",
            "rule_maximizes",
            "reads_loss",
            "stored_dtypes",
            "kernel_tensors",
            "TAKES",
        ),
        *("finalize_variable_values", "dtype", "dtypes", "betas", "etas", "adam_betas"),
        # the kernels' loops, rows, bounds and tables
        *("dt", "table", "rows", "cols", "rank", "size", "bounds", "largest_length", "second_largest_length"),
        *("kernel", "partials", "chunks", "n_chunks", "ws", "gvals", "tvals", "BLOCK", "DT", "NT"),
        *("ROW", "drive"),  # the fused kernels' row signature and their threads' driver
        # Python's own, and the typing names the modules import
        *("abs", "max", "min", "float", "int", "bool", "callable", "zip", "range", "len"),
        *("Any", "Callable", "Iterator", "NamedTuple"),
    }
)
#: the names under which the generated code also binds a rule's hyperparameters where the framework
#: has its own (optax's ``b1``, ``b2``, ``eps``; torch's ``maximize``, ``step_sizes``): a hyperparameter
#: may have one of them, a value or a state may not
_HYPER_ALIASES = frozenset({"b1", "b2", "eps", "maximize", "step_sizes"})
#: families of names the generated code makes (temporaries, a kernel's view of each array and its
#: constants, JAX's new states, the reductions' partial sums, the kernels' functions, constants)
_TAKEN_FAMILIES = re.compile(
    r"^(tmp\d+|red\d+|(rank|size|rows|cols|machine_epsilon)_\d+|sumsq_\w*|global_(sum|sumsq|max)_\w+|new_\w+|[cb]_\w*|\w+_|"
    r"(reduce|prepare|run|split|addresses)_\w+|[A-Z][A-Z0-9]*_[A-Z0-9_]+)$"
)


def taken(name: str) -> bool:
    """Whether the generated code uses ``name`` itself (a rule may not declare it)."""
    return name in _TAKEN or bool(_TAKEN_FAMILIES.match(name))


sqrt = sp.sqrt
exp = sp.exp
log = sp.log
sign = sp.sign
erf = sp.erf
maximum = sp.Max
minimum = sp.Min
Eq = sp.Eq
Ne = sp.Ne


def where(condition: Any, if_true: Any, if_false: Any) -> sp.Expr:
    """Element-wise choice: ``if_true`` where ``condition`` holds, else ``if_false``."""
    return sp.Piecewise(
        (sp.sympify(if_true), checked_condition(condition, "where()")), (sp.sympify(if_false), True)
    )


def checked_condition(condition: Any, what: str, rule: str | None = None) -> Any:
    """``condition``, refused where it is Python's ``True`` or ``False``: that is what ``t == 1`` and ``x != 0``
    give (they compare the two expressions as written: ``t`` is not the number 1), and a condition that is
    always one or the other would silently drop a branch. A RuleError naming ``rule`` where there is one."""
    if isinstance(condition, bool):
        message = (
            f"the condition of {what} is Python's {condition}, not a condition on values: `==` and `!=`"
            " compare two expressions as written (`t == 1` is False, `x != 0` is True)"
        )
        hint = "write Eq(t, 1) or Ne(x, 0) (from optforge.compiler.dsl), or leave the condition out"
        if rule is not None:
            raise RuleError(rule, message, origin=_origin(), hint=hint)
        raise TypeError(f"{message} ({_origin()}); {hint}")
    return condition


class Given(sp.Symbol):
    """``Given(x)``: the optional hyperparameter ``x`` was given (is not None). A static condition."""

    def __new__(cls, option: sp.Symbol | str):
        name = option if isinstance(option, str) else option.name
        obj = super().__new__(cls, f"{name}?")
        obj.option = name
        return obj

    def __getnewargs__(self):
        return (self.option,)


class idiv(sp.Function):  # noqa: N801
    """``idiv(a, b)``: integer division, ``a // b``."""

    nargs = 2
    #: below a product's (Python's ``//`` and ``%`` bind like ``*``, left to right): a printer puts a factor
    #: ``imod(t, N)`` of a product in parentheses, ``c * (t % N)``, not ``c * t % N`` = ``(c * t) % N``
    precedence = 49


class imod(sp.Function):  # noqa: N801
    """``imod(a, b)``: the remainder ``a % b``."""

    nargs = 2
    #: below a product's (Python's ``//`` and ``%`` bind like ``*``, left to right): a printer puts a factor
    #: ``imod(t, N)`` of a product in parentheses, ``c * (t % N)``, not ``c * t % N`` = ``(c * t) % N``
    precedence = 49


class float32(sp.Function):  # noqa: N801
    """``float32(x)``: ``x`` rounded to the nearest float32, then used in the working dtype: a reference that
    keeps a value in float32 (torch's NAdam keeps ``mu_product`` in a float32 tensor; optax's Adafactor its
    momentum, ``dtype_momentum``) is mirrored exactly. A value per step, per tensor or per element."""

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.Float(common.float32(float(x)), 17)
        return None


class clip(sp.Function):
    """``clip(x, low, high)``: ``x`` limited to ``[low, high]`` element-wise."""

    nargs = 3


# --------------------------------------------------------------------------------------
# reductions: one value per tensor, or one per step over all tensors


class Over(enum.StrEnum):
    """What a reduction runs over: the elements of one tensor (one value per tensor), or every element of
    every tensor of the step (one value per step)."""

    TENSOR = "tensor"
    GLOBAL = "global"


class Accumulate(enum.StrEnum):
    """How a reduction accumulates its elements."""

    SUM = "sum"
    MAX = "max"


class Reduction(sp.Function):
    """A reduction: ``over`` one tensor (one value per tensor) or all tensors of the step (one value per
    step), accumulating by ``sum`` or ``max``. Passes and printers ask these, never the class's name."""

    nargs = 1
    over: Over
    accumulate: Accumulate
    name = ""  # the value's name, where the reduction has one whatever its argument (``size``)
    from_shape = False  # known from the tensor's shape: no pass over its elements, no communication
    number = False  # a Python number in every backend (the rank, the dtype's epsilon), never an array

    @property
    def summand(self) -> sp.Expr:
        """What each element adds to the accumulator: the argument."""
        return self.args[0]


class TensorSum(Reduction):
    """Sum over the elements of one tensor: one value per tensor."""

    over, accumulate = Over.TENSOR, Accumulate.SUM


class TensorMax(Reduction):
    """Maximum over the elements of one tensor: one value per tensor."""

    over, accumulate = Over.TENSOR, Accumulate.MAX


class TensorSize(Reduction):
    """The number of elements of one tensor (the argument: the parameter ``w``): a sum of 1 per element,
    which the frameworks read from the tensor's shape."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.SUM, "size", True, True

    @property
    def summand(self) -> sp.Expr:
        return sp.Integer(1)


class GlobalSum(Reduction):
    """Sum over every element of every tensor of the step: one value per step."""

    over, accumulate = Over.GLOBAL, Accumulate.SUM


class GlobalMax(Reduction):
    """Maximum over every element of every tensor of the step: one value per step."""

    over, accumulate = Over.GLOBAL, Accumulate.MAX


class TensorRank(Reduction):
    """The number of axes of one tensor (the argument: the parameter ``w``): known from its shape, one value
    per tensor (a matrix's rank is 2)."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.MAX, "rank", True, True


class MachineEpsilon(Reduction):
    """The machine epsilon of one tensor's dtype (the argument: the parameter ``w``; 2.2e-16 for float64,
    1.2e-7 for float32): torch's ``torch.finfo(param.dtype).eps``, known from the tensor, one value per
    tensor."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.MAX, "machine_epsilon", True, True


class DtypeEpsilon(sp.Function):
    """The machine epsilon of the dtype a kernel computes in: a value of the step, where a kernel takes
    tensors of one dtype (``compiler/shape_class.py`` reads :class:`MachineEpsilon` so for the kernels).
    The kernels' once-per-step code prints it as ``np.finfo(dt).eps``."""

    nargs = 0
    is_real = True
    is_positive = True

    @property
    def is_number(self) -> bool:  # a value of the step, not a number SymPy knows (Max compares numbers)
        return False


class TensorRows(Reduction):
    """The length of the tensor's axis before the last (``m`` of an ``m x n`` matrix; 1 for a tensor of rank
    below 2, which is a ``1 x n`` matrix): known from its shape, one value per tensor."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.MAX, "rows", True, True


class TensorCols(Reduction):
    """The length of the tensor's last axis (``n`` of an ``m x n`` matrix; 1 for a 0-d tensor): known from
    its shape, one value per tensor."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.MAX, "cols", True, True


# --------------------------------------------------------------------------------------
# matrix operations: a per-element value viewed as a matrix (its last two axes; leading axes are batch
# axes; a tensor of rank below 2 is a 1 x n matrix, as in broadcasting)


class MatrixOp(sp.Function):
    """An operation on values viewed as matrices: the result's shape is not the operands' (passes/shape.py
    says what it is). Passes and printers ask ``isinstance(x, MatrixOp)`` and ``word``, never the class's
    name for what they share."""

    word = ""


class MatrixProduct(MatrixOp):
    """The matrix product ``a @ b`` over the last two axes (``(..., m, k) @ (..., k, n)``), batched over
    the leading ones."""

    nargs = 2
    word = "matmul"


class Transposed(MatrixOp):
    """The transpose of the last two axes (``(..., m, n)`` -> ``(..., n, m)``)."""

    nargs = 1
    word = "transpose"


def matmul(a: Any, b: Any) -> sp.Expr:
    """The matrix product of two values viewed as matrices (their last two axes; ``a @ b``)."""
    return MatrixProduct(sp.sympify(a), sp.sympify(b))


def transpose(x: Any) -> sp.Expr:
    """A value viewed as a matrix, transposed (its last two axes swapped)."""
    return Transposed(sp.sympify(x))


class LargestLength(Reduction):
    """The length of the tensor's longest axis (1 for a 0-d tensor): known from its shape."""

    over, accumulate, name, from_shape, number = Over.TENSOR, Accumulate.MAX, "largest_length", True, True


class SecondLargestLength(Reduction):
    """The length of the tensor's second longest axis (1 below rank 2): known from its shape. With
    ``largest_length``, whether the two axes that ``largest_axis`` and ``second_largest_axis`` name are long
    enough to factor over (optax's Adafactor: ``min_dim_size_to_factor``)."""

    over, accumulate, name, from_shape, number = (
        Over.TENSOR,
        Accumulate.MAX,
        "second_largest_length",
        True,
        True,
    )


# --------------------------------------------------------------------------------------
# reductions over one axis: a value per element, with that axis of the tensor reduced to length 1


class AxisBySize(sp.Function):
    """An axis each tensor's sizes choose, as ``axis=`` of a reduction over one axis: ``AxisBySize(1)`` its
    longest axis, ``AxisBySize(2)`` its second longest (optax's Adafactor factors over these two; ties go to
    the later axis, as ``numpy.argsort`` orders them). A tensor of rank 1 has no second longest axis, a 0-d
    tensor neither (a reduction over it leaves the values as they are, as over an axis a tensor lacks).
    Resolved per tensor from the parameter's shape (``runtime.common.axis_by_size``)."""

    nargs = 1

    @property
    def rank_by_size(self) -> int:
        return int(self.args[0])

    @property
    def token(self) -> str:
        """The axis in a state's scope (``runtime.common.state_shape``): ``largest``, ``second_largest``."""
        return {1: "largest", 2: "second_largest"}[self.rank_by_size]


#: The tensor's longest axis (``axis=largest_axis``), and its second longest: per tensor, by their lengths.
largest_axis = AxisBySize(1)
second_largest_axis = AxisBySize(2)


class AxisReduction(sp.Function):
    """A reduction over one axis of the tensor (``axis``: -1 the last, -2 the one before): the result keeps
    the reduced axis with length 1 (``keepdims``), so it broadcasts against the tensor: a row of one value
    per row (``axis=-1``) or a column (``axis=-2``). A tensor without that axis (a vector's ``-2``, a
    scalar's ``-1``) has it with length 1, as in broadcasting: the reduction leaves its values as they
    are. Passes and printers ask ``accumulate`` and ``axis``, never the class's name."""

    nargs = 2
    accumulate: Accumulate
    word = ""  # as the equations' text and the docs print it: sum, mean, max

    @property
    def axis(self) -> int | AxisBySize:
        """The axis: a negative int, or an axis the tensor's sizes choose (:class:`AxisBySize`)."""
        axis = self.args[1]
        return axis if isinstance(axis, AxisBySize) else int(axis)


class AxisSum(AxisReduction):
    """Sum over one axis, kept with length 1."""

    accumulate, word = Accumulate.SUM, "sum"


class AxisMean(AxisReduction):
    """Mean over one axis, kept with length 1."""

    accumulate, word = Accumulate.SUM, "mean"


class AxisMax(AxisReduction):
    """Maximum over one axis, kept with length 1."""

    accumulate, word = Accumulate.MAX, "max"


# --------------------------------------------------------------------------------------
# a cover of the tensor by its axes (SM3): for each axis, one value per index along it


class CoverMax(sp.Function):
    """``cover_max(x)``: for each axis ``r`` of the tensor, the maximum of ``x`` over the slice of each index
    along ``r`` (over every other axis): SM3's ``mu(r) <- max over j in S_r of x(j)`` for the cover of the
    tensor by its slices. One vector per axis: ``m + n`` values for an ``m x n`` matrix, the tensor itself
    for a vector, one value for a 0-d tensor. Stored in a state (``scope`` inferred: ``element/cover``) and
    read per element by :class:`CoverMin`."""

    nargs = 1


class CoverMin(sp.Function):
    """``cover_min(mu)``: for each element, the minimum over the tensor's axes of ``mu``'s value at the
    element's index along that axis (SM3's ``nu(i) = min over r with i in S_r of mu(r)``): a value per
    element of what :class:`CoverMax` made (a state of scope ``element/cover``)."""

    nargs = 1


def cover_max(x: Any) -> sp.Expr:
    """For each axis, the maximum of the per-element value ``x`` over the tensor's other axes (SM3's cover
    by slices: one vector per axis, ``m + n`` values for an ``m x n`` matrix). Assign it to a state."""
    return CoverMax(sp.sympify(x))


def cover_min(mu: Any) -> sp.Expr:
    """Per element, the minimum over the tensor's axes of the cover ``mu`` (a state assigned
    ``cover_max(...)``) at the element's index along each axis."""
    return CoverMin(sp.sympify(mu))


def _axis(axis: Any, where: str) -> sp.Basic:
    if isinstance(axis, AxisBySize):
        return axis
    if isinstance(axis, bool) or not isinstance(axis, int) or axis >= 0:
        raise TypeError(
            f"{where}: axis must be a negative int counted from the last axis (-1: the last, -2: the one"
            f" before), largest_axis or second_largest_axis. Received: axis={axis!r}"
        )
    return sp.Integer(axis)


def tensor_sum(x: Any, axis: int | None = None) -> sp.Expr:
    """Sum over one tensor (one value per tensor), or over one of its axes (``axis=-1``: one value per
    row, kept as a column of length-1 rows that broadcasts)."""
    if axis is not None:
        return AxisSum(sp.sympify(x), _axis(axis, "tensor_sum"))
    return TensorSum(sp.sympify(x))


def tensor_sumsq(x: Any, axis: int | None = None) -> sp.Expr:
    """Sum of squares over one tensor, ``||x||^2`` (or over one axis)."""
    return tensor_sum(sp.sympify(x) ** 2, axis)


def tensor_norm(x: Any, axis: int | None = None) -> sp.Expr:
    """Euclidean (Frobenius) norm of one tensor, ``||x||`` (or over one axis)."""
    return sp.sqrt(tensor_sum(sp.sympify(x) ** 2, axis))


#: The number of elements of the current tensor (a per-tensor value: ``tensor_sum(x) / size`` is a mean).
size = TensorSize(w)

#: The number of axes of the current tensor (a per-tensor value: ``where(rank >= 2, ...)`` takes matrices).
rank = TensorRank(w)

#: The length of the current tensor's axis before the last (``m`` of an ``m x n`` matrix; 1 below rank 2).
rows = TensorRows(w)

#: The length of the current tensor's last axis (``n`` of an ``m x n`` matrix; 1 for a 0-d tensor).
cols = TensorCols(w)

#: The machine epsilon of the current tensor's dtype (a per-tensor value: torch's ``finfo(dtype).eps``).
machine_epsilon = MachineEpsilon(w)

#: The lengths of the current tensor's longest and second longest axes (``largest_axis`` names the first).
largest_length = LargestLength(w)
second_largest_length = SecondLargestLength(w)


def tensor_mean(x: Any, axis: int | None = None) -> sp.Expr:
    """Mean over the elements of one tensor, ``tensor_sum(x) / max(size, 1)`` (a tensor with no element: 0,
    as a mean over an empty axis); with ``axis``, over that axis."""
    if axis is not None:
        return AxisMean(sp.sympify(x), _axis(axis, "tensor_mean"))
    return TensorSum(sp.sympify(x)) / sp.Max(size, 1)


def tensor_max(x: Any, axis: int | None = None) -> sp.Expr:
    if axis is not None:
        return AxisMax(sp.sympify(x), _axis(axis, "tensor_max"))
    return TensorMax(sp.sympify(x))


def global_sum(x: Any) -> sp.Expr:
    return GlobalSum(sp.sympify(x))


def global_sumsq(x: Any) -> sp.Expr:
    return GlobalSum(sp.sympify(x) ** 2)


def global_norm(x: Any) -> sp.Expr:
    """Norm over all tensors of the step, ``sqrt(sum over tensors of ||x||^2)``."""
    return sp.sqrt(GlobalSum(sp.sympify(x) ** 2))


def global_max(x: Any) -> sp.Expr:
    return GlobalMax(sp.sympify(x))


REDUCTIONS = {
    cls.__name__: cls.over
    for cls in (TensorSum, TensorMax, TensorSize, TensorRank, MachineEpsilon, GlobalSum, GlobalMax)
}


# --------------------------------------------------------------------------------------
# declarations


@dataclasses.dataclass(frozen=True)
class Hyper:
    """A hyperparameter: a number fixed by the user (or, for the learning rate, a schedule)."""

    name: str
    default: float | bool | str | None
    kind: str  # "float", "int", "bool", "choice" or "learning_rate"
    interval: Interval | None
    meaning: str
    latex: str
    zero_is_off: bool = False  # an option whose value 0 means "not given" (Keras's clipnorm=0)
    #: an option: None turns it off (``Given(x)`` tests it); its default is None or a value (optax's
    #: Adafactor ``clipping_threshold=1.0``: on unless None is given)
    optional: bool = False
    #: a choice (``kind == "choice"``): the strings it may be (optax's polyak_sgd ``variant``: "sps", "sps+")
    choices: tuple[str | None, ...] = ()

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name)


class Choice:
    """A hyperparameter that is one of a few strings (``Rule.choice``); ``choice == "sps+"`` is the static
    condition that it is that one (``when=``, ``only_if=``, ``where(...)``), a Python test in every backend."""

    def __init__(self, rule: str, name: str, choices: tuple[str | None, ...]) -> None:
        self.rule, self.name, self.choices = rule, name, choices
        self.symbol = sp.Symbol(name)

    def _value(self, value: Any) -> Str:
        if not isinstance(value, str) or value not in self.choices:
            raise RuleError(
                self.rule,
                f"'{self.name}' is one of {', '.join(map(repr, self.choices))}; the rule compares it with"
                f" {value!r} (a test compares it with one of its strings)",
                origin=_origin(),
            )
        return Str(value)

    def __eq__(self, value: Any) -> sp.Basic:  # type: ignore[override]
        return sp.Eq(self.symbol, self._value(value))

    def __ne__(self, value: Any) -> sp.Basic:  # type: ignore[override]
        return sp.Ne(self.symbol, self._value(value))

    def __hash__(self) -> int:
        return hash(self.symbol)

    def __repr__(self) -> str:
        return f"<choice {self.name}: {', '.join(map(repr, self.choices))}>"


@dataclasses.dataclass(frozen=True)
class State:
    """A value the optimizer keeps between steps."""

    name: str
    init: sp.Expr
    meaning: str
    latex: str
    scope: str | None  # declared scope ("element", "tensor", "global") or None: inferred
    exists_if: Any = sp.true  # static condition under which it is stored (checked against every use)
    #: the constructor keyword that chooses its storage dtype (optax's ``mu_dtype``), or "" (the state's
    #: dtype is the optimizer's: ``state_dtype``, else the parameter's, at least float32)
    dtype: str = ""

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name)


@dataclasses.dataclass(frozen=True)
class Equation:
    """``target <- expr``, in force when the static condition ``when`` holds."""

    target: str
    expr: sp.Expr
    label: str
    when: Any  # a sympy boolean of flags and hyperparameters
    origin: str  # "rules/adamax.py:31"
    kind: str  # "assign" (state, w or g) or "let" (a named intermediate value)

    def text(self) -> str:
        """The equation as ``optforge show`` prints it: in the rule's order where SymPy reordered it
        (``w <- w - lr*g``, not ``-lr*g + w``)."""
        from .render import equation_text, math_text  # render prints Equations: imported when used

        cond = "" if self.when is sp.true else f"    (when {math_text(self.when)})"
        return f"{equation_text(self)}{cond}"


def own_equation(equations, core, number: int) -> tuple[int, Equation]:
    """Equation ``number`` (1-based, of ``equations``) as the rule's author wrote it, and its number there:
    where a transform wrapped the rule's own equations (``core``; Keras's options: ``where(is_update, e,
    x)``), the author's equation, numbered as written; else the equation itself. Errors quote this one."""
    eq = equations[number - 1]
    key = (eq.origin, eq.target, eq.label, eq.kind)
    same = [e for e in equations[:number] if (e.origin, e.target, e.label, e.kind) == key]
    own = [(i, e) for i, e in enumerate(core or (), 1) if (e.origin, e.target, e.label, e.kind) == key]
    return own[len(same) - 1] if len(own) >= len(same) else (number, eq)


def _origin() -> str:
    """file:line of the first caller outside this module."""
    frame = sys._getframe(1)
    here = os.path.abspath(__file__)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == here:
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    path = frame.f_code.co_filename
    parts = path.replace(os.sep, "/").split("/")
    if "rules" in parts:
        path = "/".join(parts[len(parts) - 1 - parts[::-1].index("rules") :])
    else:
        path = os.path.basename(path)
    return f"{path}:{frame.f_lineno}"


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


# --------------------------------------------------------------------------------------
# the rule


class Rule:
    """An optimizer's update rule, written once for every backend.

    ``name`` is the class name the backends generate (``Adamax``); the module
    and the JAX function take its snake-case form (``adamax``).
    """

    def __init__(
        self,
        name: str,
        *,
        title: str,
        summary: str = "",
        references: tuple[str, ...] | list[str] = (),
        module: str | None = None,
    ) -> None:
        if not name.isidentifier() or not name[0].isupper():
            raise RuleError(name, "a rule's name is a class name such as 'Adamax'")
        self.name = name
        self.module = module or _snake(name)
        self.title = title
        self.summary = summary
        self.references = tuple(references)
        self.file = _origin().rsplit(":", 1)[0]
        self.base: str | None = None
        self.hypers: dict[str, Hyper] = {}
        self.states: dict[str, State] = {}
        self.equations: list[Equation] = []
        self.configs: dict[str, dict[str, Any]] = {"default": {}}
        self.exclusives: list[tuple[str, ...]] = []
        self.transforms: list[str] = []  # names of the transforms applied, in order
        self.finalize: list[Equation] = []  # what finalize_variable_values assigns to w (e.g. the EMA)
        self.core: list[Equation] | None = None  # the rule's own equations, when a transform wrapped them
        #: the rule a transform wrapped (Keras's options), compiled on its own too: the plain backends print
        #: it and run the transform's stages from the runtime (None: not wrapped)
        self.inner: Rule | None = None
        #: the transform that made this rule from ``inner`` (Keras's options), to apply it again to ``inner``
        #: specialised (``shape_class``: the rule for the tensors whose step is element-wise)
        self.wrap: Any = None
        self.let_latex: dict[str, str] = {}  # LaTeX of the named intermediate values

    def __repr__(self) -> str:
        return f"<Rule {self.name}: {len(self.equations)} equations>"

    @property
    def reads_loss(self) -> bool:
        """Whether the step reads the objective's value (``loss``): each backend's step then takes it
        (NumPy's ``step(..., value=)``, JAX's ``update(..., value=)``, torch's ``step(closure)``). Asked at
        every step by drivers (the demo, the plots, the tests): kept until the equations change."""
        key = tuple(map(id, self.equations))
        if getattr(self, "_reads_loss", (None,))[0] != key:
            self._reads_loss = (key, any(loss in sp.sympify(e.expr).free_symbols for e in self.equations))
        return self._reads_loss[1]

    # -- declarations ---------------------------------------------------------------

    def _declare_name(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise RuleError(self.name, f"{what} name {name!r} is not a Python identifier", origin=_origin())
        own = (self.name, f"{self.name}State")  # the rule's classes (a module's functions construct them)
        alias = what in ("value", "state") and name in _HYPER_ALIASES
        if name in RESERVED or taken(name) or name.startswith("_") or name in own or alias:
            if name in RESERVED:
                why = (
                    "g, w, t, n and loss are the gradient, the parameter, the steps and the objective's value"
                )
            elif name.startswith("_") or (name not in _TAKEN and _TAKEN_FAMILIES.match(name)):
                why = (
                    "the generated code names its own values so: a leading _, a trailing _, tmp3, red3, c_*,"
                    " b_*, new_*, sumsq_*, global_sum_*, prepare_*, ALL_CAPS_NAMES"
                )
            elif name in own:
                why = "the generated classes take the rule's name and its state's"
            else:
                why = "the generated code uses it itself"
            raise RuleError(
                self.name,
                f"{what} name '{name}' is reserved ({why})",
                origin=_origin(),
                hint="choose another name",
            )
        if (
            name in self.hypers
            or name in self.states
            or name in self.dtype_keywords
            or any(e.kind == "let" and e.target == name for e in self.equations)
        ):
            raise RuleError(
                self.name, f"'{name}' is declared twice", origin=_origin(), hint="give it one declaration"
            )

    def _declare_dtype(self, state: str, keyword: Any) -> None:
        """``keyword``, the constructor argument that chooses ``state``'s storage dtype: a new name, or one
        that another state's dtype already takes (both then follow it)."""
        if keyword in self.dtype_keywords:
            return
        if keyword == state:
            raise RuleError(
                self.name,
                f"state '{state}': dtype={keyword!r} names the state itself, not a keyword for its dtype",
                origin=_origin(),
                hint=f"name the keyword after the state, such as dtype='{state}_dtype'",
            )
        self._declare_name(keyword, "dtype keyword")

    @property
    def dtype_keywords(self) -> list[str]:
        """The constructor keywords that choose states' dtypes (``state(..., dtype=)``), in order."""
        return list(dict.fromkeys(s.dtype for s in self.states.values() if s.dtype))

    def learning_rate(
        self,
        default: float | None,
        meaning: str = "step size (a float, or a schedule step -> lr)",
        *,
        latex: str = r"\eta",
    ) -> sp.Symbol:
        """Declare the learning rate ``learning_rate`` (``lr`` in torch): a float in [0, inf) or a schedule.

        ``default=None`` makes it a required argument (as in optax).
        """
        if "learning_rate" in self.hypers:
            raise RuleError(self.name, "the learning rate is declared twice", origin=_origin())
        interval = Interval(0.0, math.inf, True, False)
        if default is not None:
            self._check_default("learning_rate", default, interval)
            default = float(default)
        self.hypers["learning_rate"] = Hyper(
            "learning_rate", default, "learning_rate", interval, meaning, latex
        )
        return sp.Symbol("learning_rate")

    def hyper(
        self, name: str, default: float, range: str, meaning: str, *, latex: str | None = None
    ) -> sp.Symbol:
        """Declare a real hyperparameter with its default, its valid range ('[0, 1)') and a one-line meaning."""
        self._declare_name(name, "hyperparameter")
        interval = self._interval(name, range)
        self._check_default(name, default, interval)
        self.hypers[name] = Hyper(
            name, float(default), "float", interval, meaning, latex or _latex_name(name)
        )
        return sp.Symbol(name)

    def option(
        self,
        name: str,
        range: str,
        meaning: str,
        *,
        integer: bool = False,
        zero_is_off: bool = False,
        default: float | None = None,
        latex: str | None = None,
    ) -> sp.Symbol:
        """An optional hyperparameter: ``None`` turns it off; test it with ``Given(x)``. Off by default, or on
        at ``default`` (optax's Adafactor: ``clipping_threshold=1.0``, ``None`` to turn it off).

        Every read of its value must be guarded by ``Given(x)`` (``only_if=``, ``when=``, or inside
        ``where(Given(x), ...)``); an unguarded read is a compile error at its equation.

        ``zero_is_off``: 0 means off too (it becomes None when the optimizer is built).
        """
        self._declare_name(name, "option")
        kind = "int" if integer else "float"
        interval = self._interval(name, range)
        if default is not None:
            self._check_default(name, default, interval)
            if integer and not isinstance(default, int):
                raise RuleError(
                    self.name, f"the default of the integer option '{name}' is {default!r}", origin=_origin()
                )
            default = default if integer else float(default)
        self.hypers[name] = Hyper(
            name, default, kind, interval, meaning, latex or _latex_name(name), zero_is_off, optional=True
        )
        return sp.Symbol(name)

    def exclusive(self, *names: str) -> None:
        """At most one of these options may be given."""
        self.exclusives.append(tuple(names))

    def flag(self, name: str, default: bool, meaning: str, *, latex: str | None = None) -> sp.Symbol:
        """Declare a boolean option; use it in ``when=`` or in ``where(flag, a, b)``."""
        self._declare_name(name, "flag")
        if not isinstance(default, bool):
            raise RuleError(
                self.name,
                f"flag '{name}' needs a bool default, received {default!r}",
                origin=_origin(),
                hint="write True or False; a number belongs in rule.hyper",
            )
        escaped = name.replace("_", "\\_")
        self.hypers[name] = Hyper(name, default, "bool", None, meaning, latex or rf"\mathrm{{{escaped}}}")
        return sp.Symbol(name)

    def choice(self, name: str, choices: tuple[str | None, ...], default: str | None, meaning: str) -> Choice:
        """Declare a hyperparameter that is one of ``choices`` (strings; None may be one, as torch's Muon's
        ``adjust_lr_fn=None``), ``default`` unless given: test it with ``x == "value"`` (a static condition,
        as a flag is), a string of its. optax's polyak_sgd ``variant``."""
        self._declare_name(name, "choice")
        choices = tuple(choices)
        strings = [c for c in choices if c is not None]
        if (
            len(choices) < 2
            or not strings
            or not all(isinstance(c, str) for c in strings)
            or len(set(choices)) < len(choices)
        ):
            raise RuleError(
                self.name,
                f"choice '{name}' needs two or more distinct strings (None may be one), received {choices!r}",
                origin=_origin(),
            )
        if default not in choices:
            raise RuleError(
                self.name,
                f"the default of choice '{name}' is {default!r}, not one of {', '.join(map(repr, choices))}",
                origin=_origin(),
            )
        latex = r"\mathrm{" + name.replace("_", "\\_") + "}"
        self.hypers[name] = Hyper(name, default, "choice", None, meaning, latex, choices=choices)
        return Choice(self.name, name, choices)

    def state(
        self,
        name: str,
        init: Any = 0,
        meaning: str = "",
        *,
        latex: str | None = None,
        scope: str | None = None,
        exists_if: Any = sp.true,
        dtype: str | None = None,
    ) -> sp.Symbol:
        """Declare a state with its initial value (a number or an expression of hyperparameters).

        ``exists_if``: a static condition (a flag, ``Given(option)``) under which it is stored; every
        equation that reads or writes it must be guarded by it (checked).
        ``dtype``: the name of a constructor keyword that chooses the dtype the state is stored in (optax's
        ``mu_dtype``; None, its default, keeps the optimizer's state dtype). The step computes with the value
        as stored, and its new value is rounded to that dtype when it is stored, after the step has read it.
        """
        self._declare_name(name, "state")
        checked_condition(exists_if, "exists_if=", self.name)
        if dtype is not None:
            self._declare_dtype(name, dtype)
        if scope not in (None, "element", "tensor", "global"):
            raise RuleError(
                self.name,
                f"state '{name}': scope must be 'element', 'tensor' or 'global', received {scope!r}",
                origin=_origin(),
                hint="leave scope out to have it inferred from the equations",
            )
        self.states[name] = State(
            name,
            sp.sympify(init),
            meaning,
            latex or _latex_name(name),
            scope,
            sp.sympify(exists_if),
            dtype or "",
        )
        return sp.Symbol(name)

    def _interval(self, name: str, text: str) -> Interval:
        try:
            return Interval.parse(text)
        except (ValueError, TypeError) as exc:
            raise RuleError(
                self.name,
                f"the range of '{name}' is not readable: {exc}",
                origin=_origin(),
                hint="write it like '[0, 1)', '(0, inf)' or '[2, inf)'",
            ) from None

    def _check_default(self, name: str, default: Any, interval: Interval) -> None:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise RuleError(
                self.name,
                f"hyperparameter '{name}' needs a number as default, received {default!r}",
                origin=_origin(),
                hint="give a default inside its range; for an option that may be off, use rule.option",
            )
        if default not in interval:
            raise RuleError(
                self.name,
                f"the default of '{name}' is {default!r}, outside its range {interval}",
                origin=_origin(),
                hint="fix the default or the range",
            )

    # -- equations --------------------------------------------------------------------

    def let(self, name: str, expr: Any, label: str = "", *, latex: str | None = None) -> sp.Symbol:
        """A named intermediate value, recomputed every step (not kept)."""
        self._declare_name(name, "value")
        self.let_latex[name] = latex or _latex_name(name)
        self.equations.append(Equation(name, sp.sympify(expr), label or name, sp.true, _origin(), "let"))
        return sp.Symbol(name)

    def assign(
        self, target: sp.Symbol, expr: Any, label: str = "", *, when: Any = sp.true, only_if: Any = None
    ) -> None:
        """``target <- expr``: update a state, the parameter ``w`` or the gradient ``g``.

        ``when``: a static condition that selects a separately compiled branch of the whole rule.
        ``only_if``: a condition (static, or on the step) under which this one assignment happens;
        sugar for ``target <- where(only_if, expr, target)``, printed as an ``if`` around the statement.
        """
        if only_if is not None:
            expr = where(checked_condition(only_if, "only_if=", self.name), expr, target)
        self.equations.append(self._equation(target, expr, label, when))

    def finalizer(self, expr: Any, label: str, *, only_if: Any = None) -> None:
        """What ``finalize_variable_values`` sets each parameter to at the end of training (Keras's EMA).

        It may read ``w``, the state, the hyperparameters and the step: ``t`` and ``n`` are the last
        update's (``t`` is the number of updates made, with the default step), so ``ema / (1 - d**t)``
        bias-corrects an EMA. Reading ``g``, the learning rate or a ``let`` is a compile error.
        """
        if only_if is not None:
            expr = where(checked_condition(only_if, "only_if=", self.name), expr, w)
        self.finalize.append(Equation("w", sp.sympify(expr), label, sp.true, _origin(), "assign"))

    def define_step(self, expr: Any, label: str = "step") -> None:
        """Redefine the 1-based step ``t`` (by default ``n + 1``), e.g. to count only real updates.

        The definition becomes the rule's first equation; it may read ``n`` and hyperparameters.
        """
        if any(e.target == "t" for e in self.equations):
            raise RuleError(
                self.name,
                "the step t is defined twice",
                origin=_origin(),
                hint="define it once, with rule.define_step",
            )
        self.equations.insert(0, Equation("t", sp.sympify(expr), label, sp.true, _origin(), "let"))

    def _equation(self, target: Any, expr: Any, label: str, when: Any) -> Equation:
        if not isinstance(target, sp.Symbol):
            raise RuleError(
                self.name,
                f"the target of an assignment must be a state, w or g; received {target!r}",
                origin=_origin(),
            )
        checked_condition(when, "when=", self.name)
        try:
            expr = sp.sympify(expr)
            when = sp.sympify(when)
        except (sp.SympifyError, TypeError) as exc:
            raise RuleError(
                self.name, f"cannot read the expression assigned to '{target}': {exc}", origin=_origin()
            ) from None
        return Equation(target.name, expr, label or _default_label(target.name), when, _origin(), "assign")

    def config(self, name: str, **values: Any) -> None:
        """A named configuration that the tests run (hyperparameter values)."""
        unknown = set(values) - set(self.hypers)
        if unknown:
            raise RuleError(
                self.name, f"config '{name}' sets unknown hyperparameters {sorted(unknown)}", origin=_origin()
            )
        self.configs[name] = dict(values)

    # -- variants ---------------------------------------------------------------------

    def derive(
        self,
        name: str,
        *,
        title: str,
        summary: str = "",
        references: tuple[str, ...] | None = None,
        module: str | None = None,
    ) -> Rule:
        """A new rule that starts as a copy of this one; change it with replace/insert/remove."""
        new = copy.copy(self)
        new.__dict__ = {k: copy.copy(v) for k, v in self.__dict__.items()}
        new.name = name
        new.module = module or _snake(name)
        new.title = title
        new.summary = summary or self.summary
        new.references = self.references if references is None else tuple(references)
        new.file = _origin().rsplit(":", 1)[0]
        new.base = self.name
        new.configs = {"default": {}}
        new.exclusives = list(self.exclusives)
        new.transforms = list(self.transforms)
        new.finalize = list(self.finalize)
        new.core = None if self.core is None else list(self.core)
        new.let_latex = dict(self.let_latex)
        return new

    def _find(self, target: str, occurrence: int | None) -> int:
        hits = [i for i, e in enumerate(self.equations) if e.target == target]
        if not hits:
            raise RuleError(self.name, f"no equation assigns '{target}'", origin=_origin())
        if occurrence is None:
            if len(hits) > 1:
                raise RuleError(
                    self.name,
                    f"'{target}' is assigned {len(hits)} times; say which with occurrence=0..{len(hits) - 1}",
                    origin=_origin(),
                )
            return hits[0]
        if not 0 <= occurrence < len(hits):
            raise RuleError(
                self.name, f"'{target}' has no occurrence {occurrence} (it has {len(hits)})", origin=_origin()
            )
        return hits[occurrence]

    def replace(
        self,
        target: sp.Symbol,
        expr: Any,
        label: str | None = None,
        *,
        when: Any = None,
        occurrence: int | None = None,
    ) -> Rule:
        """Replace the equation that assigns ``target`` (keeps its label and condition unless given)."""
        i = self._find(target.name, occurrence)
        old = self.equations[i]
        new = self._equation(target, expr, label or old.label, old.when if when is None else when)
        self.equations[i] = dataclasses.replace(new, kind=old.kind)
        return self

    def insert(
        self,
        target: sp.Symbol,
        expr: Any,
        label: str = "",
        *,
        before: sp.Symbol | None = None,
        after: sp.Symbol | None = None,
        occurrence: int | None = None,
        when: Any = sp.true,
    ) -> Rule:
        """Add ``target <- expr`` before or after the equation that assigns another symbol."""
        if (before is None) == (after is None):
            raise RuleError(self.name, "insert() needs exactly one of before= or after=", origin=_origin())
        anchor = before if before is not None else after
        i = self._find(anchor.name, occurrence) + (0 if before is not None else 1)
        self.equations.insert(i, self._equation(target, expr, label, when))
        return self

    def remove(self, target: sp.Symbol, *, occurrence: int | None = None) -> Rule:
        """Drop the equation that assigns ``target``."""
        del self.equations[self._find(target.name, occurrence)]
        return self

    def set_default(self, name: str, value: Any, *, meaning: str | None = None) -> Rule:
        """Change a hyperparameter's default (the range stays) and, where given, what it means (a variant
        that uses it otherwise: AdamW's decoupled ``weight_decay``)."""
        if name not in self.hypers:
            raise RuleError(self.name, f"no hyperparameter '{name}' to set a default for", origin=_origin())
        h = self.hypers[name]
        if h.kind == "choice":
            if value not in h.choices:
                raise RuleError(
                    self.name,
                    f"choice '{name}' is one of {', '.join(map(repr, h.choices))}, received {value!r}",
                    origin=_origin(),
                )
        elif h.kind == "bool":
            if not isinstance(value, bool):
                raise RuleError(
                    self.name, f"flag '{name}' needs a bool default, received {value!r}", origin=_origin()
                )
        else:
            self._check_default(name, value, h.interval)
            value = float(value)
        self.hypers = {
            **self.hypers,
            name: dataclasses.replace(h, default=value, meaning=meaning or h.meaning),
        }
        return self


def _default_label(target: str) -> str:
    return {"w": "parameter update", "g": "gradient"}.get(target, target.replace("_", " "))


_GREEK = {
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "eta",
    "theta",
    "lambda",
    "mu",
    "nu",
    "rho",
    "sigma",
    "tau",
    "phi",
    "psi",
    "omega",
}


def _latex_name(name: str) -> str:
    """``beta_1`` -> ``\\beta_1``, ``epsilon`` -> ``\\epsilon``, ``momentum`` -> ``\\mathrm{momentum}``."""
    if name.endswith("_hat"):
        return rf"\hat{{{_latex_name(name[:-4])}}}"
    head, _, tail = name.partition("_")
    if len(head) > 1 and head not in _GREEK:  # a word: upright, underscores kept
        escaped = name.replace("_", "\\_")
        return rf"\mathrm{{{escaped}}}"
    if head in _GREEK:
        head = "\\" + head
    elif len(head) > 1:
        head = rf"\mathrm{{{head}}}"
    if tail:
        tail = tail if len(tail) == 1 or tail.isdigit() else rf"\mathrm{{{tail}}}"
        return f"{head}_{{{tail}}}"
    return head
