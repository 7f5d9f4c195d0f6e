"""The operation IR: what the rule IR becomes before a backend prints it, a few frozen dataclasses.

Between the rule IR (``ir.py``: sympy expressions per assignment) and the printers sits this typed,
low-level form. Its *expressions* (:data:`Expr`) are Python's evaluation tree of a statement, in the
order a backend evaluates it: binary arithmetic (``Bin``), negation, calls, conditional expressions,
comparisons. A sub-expression that reads no per-element array stays one :class:`Leaf` holding a sympy
expression, printed by the backend's expression printer (``lr / (1 - beta_1**t)`` stays readable). Its
*statements* (:data:`Stmt`) are three-address operations: one element-wise operation per :class:`Op`,
written into a scratch register or into its target (``out=``), in-place updates (:class:`Update`,
:class:`Compound`), copies, bindings and ``if`` blocks over Python conditions (:class:`If`).

Values are typed (:class:`Value`): their kind (a Python scalar, one value per tensor, one per element, a
bool) and dtype. A printer is a table from an operation's name (and, where a backend distinguishes them,
the kinds of its operands) to a call format; it never decides what is an array, what runs where or how a
statement splits: that is decided here, by the passes in ``passes/``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Union

import sympy as sp


class Kind(enum.StrEnum):
    """How many values an operand has, as a backend's step code holds it."""

    SCALAR = "scalar"  # a Python number (hyperparameters, the step, values computed from them)
    TENSOR = "tensor"  # one value per tensor (an array in the backend: a 0-d tensor, a NumPy scalar)
    ELEMENT = "element"  # one value per element: an array shaped like the parameter
    BOOL = "bool"  # a condition


class DType(enum.StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


@dataclasses.dataclass(frozen=True)
class Value:
    """A named value: a per-element array (``g``, ``m``), a scratch register (``_s0``) or a Python name."""

    name: str
    kind: Kind = Kind.ELEMENT
    dtype: DType = DType.FLOAT

    @property
    def is_array(self) -> bool:
        return self.kind in (Kind.TENSOR, Kind.ELEMENT)


# -- expressions ----------------------------------------------------------------------------------


class Prec(enum.IntEnum):
    """Python's operator precedence, numbered as :mod:`ast` numbers it: a sub-expression is parenthesised
    where the precedence its position needs is above its own."""

    TEST = 4  # a if c else b
    OR = 5
    AND = 6
    NOT = 7
    CMP = 8
    EXPR = 9
    ARITH = 13  # + -
    TERM = 14  # * / // %
    FACTOR = 15  # unary -
    POWER = 16
    AWAIT = 17
    ATOM = 18


@dataclasses.dataclass(frozen=True)
class Name:
    """A value read by name."""

    value: Value


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A sub-expression that reads no per-element array, printed whole by the expression printer; ``kind``:
    whether the backend holds it as a Python value or as an array (a per-tensor value); ``prec``: the
    precedence of its printed form."""

    expr: sp.Basic
    kind: Kind
    prec: Prec


@dataclasses.dataclass(frozen=True)
class Bin:
    """``a <op> b``, op one of ``+ - * / **``."""

    op: str
    a: Expr
    b: Expr


@dataclasses.dataclass(frozen=True)
class Neg:
    """``-a``."""

    a: Expr


@dataclasses.dataclass(frozen=True)
class Minus:
    """``-(a)``: the negated factor of a compound call (``alpha=-(lr)``), parenthesised whatever ``a`` is."""

    a: Expr


@dataclasses.dataclass(frozen=True)
class Call:
    """A function the expression printer's table knows (``sqrt``, ``Max``, ``where``, ``and``...), on arrays
    (``array``: the table's array call) or on Python values (its scalar call)."""

    fn: str
    args: tuple[Expr, ...]
    array: bool
    arrays: tuple[bool, ...] = ()  # which arguments are arrays (a table may print mixed calls otherwise)


@dataclasses.dataclass(frozen=True)
class Reduce:
    """A reduction of an array to one value: ``sum``, ``max`` or its element count (TensorSum, TensorMax,
    TensorSize)."""

    fn: str
    arg: Expr


@dataclasses.dataclass(frozen=True)
class IfExp:
    """``body if test else orelse``: Python's conditional expression (``test`` a Python value)."""

    test: Expr
    body: Expr
    orelse: Expr


@dataclasses.dataclass(frozen=True)
class Compare:
    a: Expr
    op: str
    b: Expr


@dataclasses.dataclass(frozen=True)
class BoolOp:
    """Python's ``and`` / ``or`` over Python values."""

    op: str
    values: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True)
class Not:
    a: Expr


@dataclasses.dataclass(frozen=True)
class Paren:
    """``(a)``: parentheses a printer writes where Python needs none (the fused kernels' ``(x * x)``,
    ``(a if c else b)``): they change nothing in what is computed."""

    a: Expr


@dataclasses.dataclass(frozen=True)
class Guarded:
    """``a``, evaluated only where ``guards`` hold (static conditions, sympy): a branch of a select. Printed as
    ``a``; the fused kernels' invariants read inside it are computed only there (``passes/hoist.py``)."""

    a: Expr
    guards: tuple[sp.Basic, ...]


Expr = Union[Name, Leaf, Bin, Neg, Minus, Call, Reduce, IfExp, Compare, BoolOp, Not, Paren, Guarded]


# -- statements ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """One element-wise operation written into ``out`` (a register or a state): ``op`` names the row of the
    backend's table (``add``, ``mul``, ``square``, ``sqrt``, ``maximum``, ``add_scaled``...). ``bind``: a name
    that also takes the result (``m_hat = np.add(_s0, _s1, out=_s1)``)."""

    op: str
    args: tuple[Expr, ...]
    out: Value
    bind: str = ""
    keywords: tuple[tuple[str, Expr], ...] = ()  # (name, value): ``alpha`` of ``add_scaled``
    arrays: tuple[bool, ...] = ()  # which arguments are arrays, where the table writes mixed calls otherwise
    mask: Expr | None = None  # computed only where this boolean array holds (a branch of a select)


@dataclasses.dataclass(frozen=True)
class CopyInto:
    """``out`` takes a copy of ``x`` (table row ``copy_into``)."""

    x: Expr
    out: Value


@dataclasses.dataclass(frozen=True)
class Bind:
    """``name = value``; ``duplicate``: a copy of an array held apart (table row ``duplicate``)."""

    name: str
    value: Expr
    duplicate: bool = False


@dataclasses.dataclass(frozen=True)
class Update:
    """A per-tensor buffer updated in place: ``add`` (x += v), ``sub`` (x -= v), ``set`` (x[...] = v), ``fill``."""

    form: str
    target: str
    value: Expr


@dataclasses.dataclass(frozen=True)
class Compound:
    """A compound in-place update (torch): ``add`` (x.add_(a, alpha=c)), ``addcmul`` (x.addcmul_(a, b,
    value=c)), ``addcdiv``; ``scale`` None where the factor is 1. Table rows ``inplace_<method>`` and
    ``inplace_<method>_scaled``."""

    method: str
    target: str
    args: tuple[Expr, ...]
    scale: Expr | None = None


@dataclasses.dataclass(frozen=True)
class If:
    """``if test: body else: orelse`` (``orelse`` may be empty) on a Python condition."""

    test: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()
    negated: bool = False  # the body runs where the test fails (``if not (test):``)


Stmt = Union[Op, CopyInto, Bind, Update, Compound, If]


def reads(e: Expr) -> set[str]:
    """The names of the values an expression reads (leaves not included)."""
    if isinstance(e, Name):
        return {e.value.name}
    if isinstance(e, Leaf):
        return set()
    out: set[str] = set()
    for f in dataclasses.fields(e):
        x = getattr(e, f.name)
        items = x if isinstance(x, tuple) else (x,)
        for item in items:
            if isinstance(item, tuple):  # keywords
                item = item[1]
            if dataclasses.is_dataclass(item) and not isinstance(item, Value):
                out |= reads(item)
    return out
