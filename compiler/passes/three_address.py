"""Element-wise statements as three-address operations into reusable buffers: nothing allocated per step.

A NumPy or torch statement such as ``w -= lr * m / ((1 - beta_1**t) * (epsilon + u))`` allocates one array
per operation. This pass takes the statement's evaluation tree (``evaluation.py``) and writes one
operation per array operation, each into a scratch buffer (a *register*)::

    np.multiply(lr, m, out=_s0)
    np.add(epsilon, u, out=_s1)
    np.multiply(1 - beta_1**t, _s1, out=_s1)
    np.divide(_s0, _s1, out=_s0)
    w -= _s0

The operations are the tree's, in its order, on the same dtypes: the results are those of the printed
expression, bit for bit. Sub-expressions that read no per-element array stay Python (scalars,
per-tensor values). The last operation of an overwrite (``u[...] = ...``) writes into the target
itself; a named element-wise temporary (``m_hat``) keeps its own register for the rest of the tensor's
statements. A select ``where(c, a, b)`` on arrays, where the table has comparisons and a masked copy, is
``c`` into a boolean register (a *mask*, ``_m0``), ``b`` copied into the result and ``a`` copied over it
where the mask holds (``np.copyto(_s0, _s1, where=_m0)``): the same elements as ``np.where``, in the
result's dtype, allocating nothing. Where the table's operations take a mask (NumPy's ``where=``:
``Target.masked``), each branch's operations are computed only where that branch is taken (a select
inside a branch: within that branch's elements too), so a branch not taken never takes the root of a
negative number or divides by zero; a reduction inside a branch is over the whole tensor all the same. Anything else the backend has no operation for stays an expression:
correct, and allocating. A statement whose value is a Python conditional (``a if c else b``, ``c`` a
Python value) becomes an ``if`` block per branch.

Where the backend has compound in-place calls (torch: ``x.add_(y, alpha=c)``, ``x.addcmul_(a, b)``,
``x.addcdiv_(a, b)``, ``torch.add(x, y, alpha=c)``), the Python factors of a product are multiplied once
(``m / (eps + u) * (lr / (1 - b**t))``) and the update is one call: fewer passes, and results that may
differ from the printed expression's in the last bit.

The registers are views of one buffer per dtype that the optimizer keeps (``runtime.*_support.scratch``,
the masks ``masks``), shaped like the tensor: the memory is the largest tensor times the number of
registers, allocated once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sympy as sp

from ..ir import Assign, Unused, base, ssa
from ..ops import (
    Bin,
    Bind,
    BoolOp,
    Call,
    Compare,
    Compound,
    CopyInto,
    DType,
    Expr,
    Guarded,
    If,
    IfExp,
    Kind,
    Leaf,
    Minus,
    Name,
    Neg,
    Not,
    Op,
    Paren,
    Prec,
    Reduce,
    Stmt,
    Update,
    Value,
    reads,
)
from .shape import COVER, axis_order, token


def in_place_form(a: Assign, arrays: Iterable[str], *, fill: bool = False) -> tuple[str, sp.Basic]:
    """How a buffer takes its new value: ("add", d) or ("sub", d) when it is the old plus or minus a term d;
    ("fill", v) where the backend fills a buffer with a number (``fill``) and the value reads no array;
    else ("set", value)."""
    names = set(arrays)
    if fill and not any(base(s) in names for s in a.expr.free_symbols):
        return "fill", a.expr
    old = ssa(a.target, a.version - 1)
    e = a.expr
    if isinstance(e, sp.Add) and old in e.args:
        rest = sp.Add(*[x for x in e.args if x != old])
        if rest.could_extract_minus_sign():
            return "sub", -rest
        return "add", rest
    return "set", e


@dataclasses.dataclass(frozen=True)
class Target:
    """What a backend can write as operations: the names of the functions (``sqrt``, ``Max``...) it has an
    element-wise operation with ``out=`` for, and whether it has compound in-place calls."""

    calls: frozenset[str]
    compound: bool = False
    #: the operations take a mask (NumPy's ufuncs: ``where=``): each branch of a select is computed only
    #: where it is taken, so a branch not taken never divides by zero or takes a root of a negative number
    masked: bool = False
    #: arrays that may be stored in a dtype narrower than the arithmetic (a state's ``mu_dtype``): a Python
    #: number times one is an operation of its own, in its dtype (as NumPy and JAX round ``b1*mu``), never
    #: folded into a compound call's ``alpha=`` (torch computes that in the other operand's dtype)
    narrow: frozenset[str] = frozenset()

    @property
    def selects(self) -> bool:
        """Whether a select on arrays is written as operations: comparisons into masks, a masked copy."""
        return {"copy_where", "fill", *_MIRROR} <= self.calls


class Registers:
    """The scratch buffers of one pass over the tensors: ``_s0``, ``_s1``, ... in the element-wise maths'
    dtype, and the boolean masks ``_m0``, ``_m1``, ...; freed ones are reused. A value with an axis reduced
    (a row, a column: passes/shape.py) takes registers of its own shape, a file of its own (``file``:
    ``_row0``, ``_col0``), buffers apart from these."""

    def __init__(self, prefix: str = "_s", shape: frozenset[int] = frozenset()) -> None:
        self.prefix = prefix
        self.shape = shape  # the axes reduced to length 1 (none: shaped like the tensor)
        self.files: dict[frozenset[int], Registers] = {}
        self.count = 0
        self.masks = 0
        self.free: list[str] = []
        self.free_masks: list[str] = []
        self.named: dict[str, str] = {}  # element-wise temporary -> its register, for the rest of the pass
        #: the conditions under which the statements that take these registers run (``sp.true``: always);
        #: a file whose statements all run under a test of the tensor's shape is allocated only then
        self.conditions: list = []

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        self.count += 1
        return f"{self.prefix}{self.count - 1}"

    def take_mask(self) -> str:
        if self.free_masks:
            return self.free_masks.pop()
        self.masks += 1
        return f"{self.mask_prefix}{self.masks - 1}"

    def give(self, register: str | None) -> None:
        if register is None or register in self.named.values():
            return
        free = self.free_masks if is_mask(register) else self.free
        if register not in free:
            free.append(register)

    def file(self, shape: frozenset[int] | tuple | None) -> Registers:
        """The registers of values with ``shape`` (these, for a value shaped like the tensor)."""
        if not shape or shape == self.shape:
            return self
        if shape not in self.files:
            if shape == COVER:  # SM3's cover: ``_cover0``
                prefix = "_cover"
            elif isinstance(shape, tuple):  # a matrix operation's (passes/shape.py): ``_xmm0`` for m x m
                prefix = "_x" + "".join(str(d) for d in shape)
            else:
                axes = tuple(sorted(shape, key=axis_order))
                prefix = {(-1,): "_row", (-2,): "_col"}.get(
                    axes, "_red" + "".join(token(a).lstrip("-") for a in axes) + "_"
                )
            self.files[shape] = Registers(prefix, shape)
        return self.files[shape]

    def of(self, name: str) -> str:
        if name not in self.named:
            self.named[name] = self.take()
        return self.named[name]

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def mask_names(self) -> list[str]:
        return [f"{self.mask_prefix}{i}" for i in range(self.masks)]

    @property
    def mask_prefix(self) -> str:
        return "_m" if self.prefix == "_s" else "_m" + self.prefix[1:]


def _computed(node: Expr) -> bool:
    """Whether a select's branch has element-wise operations of its own (not a name, not a scalar)."""
    return is_element(node) and not isinstance(node, Name)


def is_mask(register: str) -> bool:
    return register.startswith("_m")


@dataclasses.dataclass(frozen=True)
class Lowered:
    """A statement's operations; ``branched``: whether it became ``if`` blocks."""

    body: tuple[Stmt, ...]
    branched: bool


def bind(name: str, tree: Expr, target: Target, registers: Registers) -> Lowered:
    """``name = tree``: an element-wise value goes into ``name``'s own register."""
    return _Lowering(target, registers).statement(tree, lambda lw, node: lw.bind(name, node))


def update(form: str, name: str, tree: Expr, target: Target, registers: Registers) -> Lowered:
    """``name += tree`` (form "add") or ``name -= tree`` ("sub")."""
    return _Lowering(target, registers).statement(tree, lambda lw, node: lw.update(form, name, node))


def overwrite(name: str, tree: Expr, target: Target, registers: Registers) -> Lowered:
    """``name`` takes the value: its last operation writes into ``name`` itself."""
    return _Lowering(target, registers).statement(tree, lambda lw, node: lw.overwrite(name, node))


def _reg(name: str) -> Value:
    return Value(name, Kind.ELEMENT, DType.BOOL if is_mask(name) else DType.FLOAT)


def _is(value: Expr, name: str) -> bool:
    """Whether the value is the array ``name`` itself."""
    return isinstance(value, Name) and value.value.name == name


def holds_array(e: Expr) -> bool:
    """Whether a value that is not per-element reads an array (a per-tensor 0-d tensor, a reduction): torch
    reads a call's ``alpha=`` or ``value=`` as a number, with ``.item()`` (a device synchronisation on a
    GPU), so a scale holds Python values only."""
    if isinstance(e, Leaf):
        return e.kind != Kind.SCALAR
    if isinstance(e, Name):
        return e.value.kind != Kind.SCALAR
    return any(holds_array(c) for c in _children(e))


def mixed(e: Expr) -> bool:
    """Whether a value that is not per element is an array or a Python number as a Python test goes (``lr *
    loss if mode == "loss" else lr``): neither a call's ``alpha=`` (a number) nor its tensor operand takes
    it, so no compound call does."""
    if isinstance(e, IfExp) and holds_array(e.body) != holds_array(e.orelse):
        return True
    return any(mixed(c) for c in _children(e))


def is_element(e: Expr) -> bool:
    """Whether the value is a per-element array (a reduction's is not)."""
    if isinstance(e, Name):
        return True
    if isinstance(e, Leaf):
        return e.kind == Kind.ELEMENT
    if isinstance(e, Reduce):
        return False
    return any(is_element(c) for c in _children(e))


def _children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Bin):
        return (e.a, e.b)
    if isinstance(e, (Neg, Minus, Not)):
        return (e.a,)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Reduce):
        return (e.arg,)
    if isinstance(e, IfExp):
        return (e.test, e.body, e.orelse)
    if isinstance(e, Compare):
        return (e.a, e.b)
    if isinstance(e, BoolOp):
        return e.values
    if isinstance(e, (Paren, Guarded)):
        return (e.a,)
    return ()


def _is_two(e: Expr) -> bool:
    return isinstance(e, Leaf) and e.expr.is_Number and e.expr == 2


def _product(factors: list[Expr]) -> Expr:
    out = factors[0]
    for f in factors[1:]:
        out = Bin("*", out, f)
    return out


#: a comparison with its operands swapped: ``0 < x`` is ``x > 0`` (for NaN too: both false)
_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_LOGIC = ("and", "or", "not")
#: reductions over one axis (a row's, a column's) and a cover's (SM3's, passes/shape.py): an operation into
#: a register of the result's shape (none takes a mask)
_AXIS = ("AxisSum", "AxisMean", "AxisMax", "CoverMax", "CoverMin")
#: operations whose result may not share a buffer with an operand (a matrix product)
_APART = ("MatrixProduct",)
#: operations whose call returns nothing (``np.copyto``): a name bound to the result is bound apart
_NO_RESULT = ("copy_where", "fill")

_ONE = Leaf(sp.Float(1.0), Kind.SCALAR, Prec.ATOM)
_MINUS_ONE = Leaf(sp.Integer(-1), Kind.SCALAR, Prec.FACTOR)


class _Lowering:
    def __init__(self, target: Target, registers: Registers) -> None:
        self.target = target
        self.regs = registers
        self.lines: list[Stmt] = []
        self.held: list[str] = []  # registers read by a reduction in the statement being written
        self.active: Expr | None = None  # the mask of the select branch being written (``Target.masked``)
        self.element_statement = False  # the statement being written has a per-element value

    # -- expressions ------------------------------------------------------------------------

    def fold(self, node: Expr, absorb: bool = False) -> Expr | None:
        """Compound backends: a product or quotient with Python factors, as (its element-wise part) * (one
        Python value), computed once, in double precision: ``lr * m / ((1 - b**t) * (eps + u))`` becomes
        ``m / (eps + u) * (lr / (1 - b**t))``, two passes fewer. ``absorb``: the caller takes the Python
        value into its call (``addcdiv_(a, b, value=c)``), so one Python factor is worth folding where the
        element-wise part is a quotient. None where nothing is gained."""
        if not (self.target.compound and isinstance(node, Bin) and node.op in ("*", "/")):
            return None
        num: list[Expr] = []
        den: list[Expr] = []

        def flat(n: Expr, top: bool) -> None:
            if isinstance(n, Bin) and n.op in ("*", "/"):
                flat(n.a, top)
                flat(n.b, top if n.op == "*" else not top)
            else:
                (num if top else den).append(n)

        flat(node, True)
        if any(self.is_narrow(f) for f in num + den):
            return None
        e_num = [f for f in num if is_element(f)]
        e_den = [f for f in den if is_element(f)]
        s_num = [f for f in num if not is_element(f)]
        s_den = [f for f in den if not is_element(f)]
        scalars = len(s_num) + len(s_den)
        if not e_num or not (scalars >= 2 or (absorb and scalars == 1 and e_den)):
            return None
        scalar = _product(s_num) if s_num else _ONE
        if s_den:
            scalar = Bin("/", scalar, _product(s_den))
        element = _product(e_num)
        if e_den:
            element = Bin("/", element, _product(e_den))
        return Bin("*", element, scalar)

    def operand(self, node: Expr, out: str | None = None, fold: bool = True) -> tuple[Expr, str | None]:
        """(value, register it occupies or None): element-wise operations written into registers."""
        if not is_element(node):
            return self.scalar(node), None
        if isinstance(node, Name):
            return node, None
        folded = self.fold(node) if fold else None
        if folded is not None:
            return self.operand(folded, out, fold=False)
        if isinstance(node, Bin) and node.op == "*":
            for x, c in ((node.a, node.b), (node.b, node.a)):
                if isinstance(x, Neg) and not is_element(c) and is_element(x.a):
                    return self.operand(Bin("*", x.a, Neg(c)), out)  # (-x)*c is x*(-c): one pass fewer
        if self.target.compound and isinstance(node, Bin) and node.op in ("+", "-"):
            scaled = self.scaled(self.fold(node.b, absorb=True) or node.b)
            if scaled is not None and is_element(node.a):  # a + c*x in one call
                x, c = scaled
                c = c if node.op == "+" else Minus(c)
                return self.emit("add_scaled", [node.a, x], out, (("alpha", c),))
        if isinstance(node, Bin):
            if node.op == "**" and _is_two(node.b):
                return self.emit("square", [node.a, node.b], out)
            return self.emit(node.op, [node.a, node.b], out)
        if isinstance(node, Neg):
            return self.emit("neg", [node.a], out)
        if isinstance(node, Call) and node.array and node.fn == "Copy":
            x, reg = self.operand(node.args[0])
            self.regs.give(reg)
            dest = out or self.regs.take()
            self.lines.append(CopyInto(x, _reg(dest)))  # a statement, not an expression returning ``dest``
            return Name(_reg(dest)), (None if out else dest)
        if self.target.selects and isinstance(node, Call) and node.array and node.fn == "where":
            return self.select(node, out)
        if self.target.selects and isinstance(node, Compare):
            a, op, b = node.a, node.op, node.b
            if not is_element(a):  # the array first: torch.gt(x, 0), not torch.lt(0, x)
                a, op, b = b, _MIRROR[op], a
            return self.emit(op, [a, b], None, mask=True)
        if self.target.selects and isinstance(node, Call) and node.array and node.fn in _LOGIC:
            return self.emit(node.fn, list(node.args), None, mask=True)
        if isinstance(node, Call) and node.fn in _AXIS and self.active is not None:
            return self.scalar(node), None  # over a whole axis, within a select's branch: computed whole
        if isinstance(node, Call) and node.array and node.fn in self.target.calls:
            return self.emit(node.fn, list(node.args), out, arrays=node.arrays)
        return self.scalar(node), None  # no operation for it: an expression (it allocates)

    def select(self, node: Call, out: str | None) -> tuple[Expr, str | None]:
        """``where(c, a, b)``: ``c`` into a mask, then the result takes ``b``, and ``a`` where the mask holds
        (where the result already holds ``a``, ``b`` where the negated mask holds: a number, written into a's
        register, costs a pass over the mask instead of a buffer and a pass over it)."""
        cond, a, b = node.args
        mask, mask_reg = self.operand(cond)
        a_mask = b_mask = None
        branch_regs: list[str] = []
        if self.target.masked and is_element(mask):  # each branch computed only where it is taken
            a_mask, b_mask, branch_regs = self.branch_masks(mask, _computed(a), _computed(b))
        a_value, a_reg = self.under(a_mask, a)
        b_value, b_reg = self.under(b_mask, b)
        not_reg = branch_regs[-1] if b_mask is not None else None  # b's: where the mask does not hold
        if out is None and b_reg is not None:  # b's register becomes the result
            dest, b_reg = b_reg, None
        elif out is None and a_reg is not None and not is_element(b_value):
            dest, a_reg = a_reg, None  # a's, with the number b where the mask does not hold
        else:
            dest = out or self.regs.take()
        if _is(a_value, dest) and not_reg is not None:  # b where the mask does not hold: b's own mask
            mask, a_value, b_value = Name(_reg(not_reg)), b_value, a_value
        elif _is(a_value, dest):
            if mask_reg is None:  # a mask not ours to negate (a name): a register of its own
                mask_reg = self.regs.take_mask()
            # a condition per tensor (a 0-d value) negated into the mask: broadcast, not a mask resized
            self.lines.append(Op("not", (mask,), _reg(mask_reg), arrays=(is_element(mask),)))
            mask, a_value, b_value = Name(_reg(mask_reg)), b_value, a_value
        else:
            if not _is(b_value, dest):
                if is_element(b_value):
                    self.lines.append(CopyInto(b_value, _reg(dest)))
                else:
                    self.lines.append(Op("fill", (b_value,), _reg(dest)))
            if a_mask is not None:  # a where it was computed: where c holds within the branch written
                mask = a_mask
        self.lines.append(
            Op("copy_where", (mask, a_value), _reg(dest), arrays=(is_element(mask), is_element(a_value)))
        )
        for reg in (mask_reg, *branch_regs, a_reg, b_reg):
            self.regs.give(reg)
        return Name(_reg(dest)), (None if out else dest)

    def branch_masks(self, mask: Expr, a: bool, b: bool) -> tuple[Expr | None, Expr | None, list[str]]:
        """The masks of a select's branches that have operations (``a``, ``b``): where its condition holds,
        and where it does not, each within the branch being written if any (a select inside a branch:
        only that branch's elements); None for a branch without operations; the mask registers taken."""
        outer, taken = self.active, []
        a_mask = b_mask = None
        if a:
            a_mask = mask
            if outer is not None:
                a_mask, reg = self.emit("and", [mask, outer], None, mask=True)
                taken.append(reg)
        if b:
            b_mask, reg = self.emit("not", [mask], None, mask=True)
            taken.append(reg)
            if outer is not None:
                self.lines.append(Op("and", (b_mask, outer), _reg(reg)))
        return a_mask, b_mask, taken

    def under(self, mask: Expr | None, node: Expr) -> tuple[Expr, str | None]:
        """``operand(node)``, its operations computed only where ``mask`` holds (everywhere if None, or
        where the branch being written says)."""
        if mask is None:
            return self.operand(node)
        outer, self.active = self.active, mask
        try:
            return self.operand(node)
        finally:
            self.active = outer

    def emit(self, op: str, args: list[Expr], out: str | None, keywords=(), arrays=(), mask: bool = False):
        """``op`` on ``args`` into ``out``, or a register (a mask: a comparison's or a logical operation's)."""
        values, held = [], []
        for a in args:
            value, reg = self.operand(a)
            values.append(value)
            held.append(reg)
        if op in _APART:  # a product reads every element of its operands for each of its own: apart
            return self.apart(op, values, held, out, keywords, arrays)
        for reg in held:  # the result may go into an argument's register: element-wise, that is safe
            self.regs.give(reg)
        dest = out or (self.regs.take_mask() if mask else self.regs.take())
        where = None if mask else self.active  # arithmetic in a branch; the masks are computed everywhere
        self.lines.append(
            Op(op, tuple(values), _reg(dest), keywords=tuple(keywords), arrays=tuple(arrays), mask=where)
        )
        return Name(_reg(dest)), (None if out else dest)

    def occupies(self, value: Expr, register: str) -> bool:
        """Whether ``value`` reads the buffer ``register``: it is that register, or a name held in it (a
        ``let`` kept in its register for the pass), or an expression reading such a name."""
        if isinstance(value, Name):
            names = {value.value.name}
        elif isinstance(value, Leaf):
            names = {base(s) for s in value.expr.free_symbols}
        else:
            return False
        return any(n == register or self.regs.named.get(n) == register for n in names)

    def apart(self, op: str, values: list[Expr], held: list, out: str | None, keywords, arrays):
        """``op`` into a buffer that is none of its operands: a register of its own, copied into ``out``
        where ``out`` is an operand (``X <- B @ X``)."""
        into = out if out is not None and not any(self.occupies(v, out) for v in values) else None
        dest = into or self.regs.take()
        self.lines.append(Op(op, tuple(values), _reg(dest), keywords=tuple(keywords), arrays=tuple(arrays)))
        for reg in held:
            self.regs.give(reg)
        if out is not None and into is None:
            self.lines.append(CopyInto(Name(_reg(dest)), _reg(out)))
            self.regs.give(dest)
            return Name(_reg(out)), None
        return Name(_reg(dest)), (None if out else dest)

    def scalar(self, node: Expr) -> Expr:
        """A value as an expression; a reduction's argument (not under a conditional, where it may not be
        computable) is evaluated into a register first."""
        if isinstance(node, (IfExp, BoolOp)):
            return node
        if isinstance(node, Reduce):  # over the whole tensor, whatever branch reads it
            outer, self.active = self.active, None
            try:
                value, reg = self.operand(node.arg)
            finally:
                self.active = outer
            if reg is not None:  # read by the statement: free after it
                self.held.append(reg)
            return Reduce(node.fn, value)
        if isinstance(node, Bin):
            return Bin(node.op, self.scalar(node.a), self.scalar(node.b))
        if isinstance(node, (Neg, Minus, Not)):
            return type(node)(self.scalar(node.a))
        if isinstance(node, Call):
            return dataclasses.replace(node, args=tuple(self.scalar(a) for a in node.args))
        if isinstance(node, Compare):
            return Compare(self.scalar(node.a), node.op, self.scalar(node.b))
        return node

    def scaled(self, node: Expr, array: bool = False) -> tuple[Expr, Expr] | None:
        """(x, c) when the node is an element-wise x times a value c that is not per element: a Python value
        (a call's ``alpha=``), or with ``array`` one that holds an array (see ``holds_array``)."""
        if isinstance(node, Bin) and node.op == "*":
            for x, c in ((node.b, node.a), (node.a, node.b)):
                if self.is_narrow(x):
                    return None
                if is_element(x) and not is_element(c) and holds_array(c) == array and not mixed(c):
                    return x, self.scalar(c)
        return None

    def is_narrow(self, e: Expr) -> bool:
        """A name of an array that may be narrower than the arithmetic (``Target.narrow``)."""
        return isinstance(e, Name) and e.value.name in self.target.narrow

    # -- statements ---------------------------------------------------------------------------

    def bind(self, name: str, node: Expr) -> None:
        if isinstance(node, Name) and node.value.name == name:  # a branch that leaves the value as it is
            return
        if isinstance(node, Name) and node.value.name in self.regs.named and node.value.name != name:
            # an alias of a register would change when its owner is written again
            self.lines.append(Bind(name, node, duplicate=True))
            return
        if isinstance(node, Leaf) and isinstance(node.expr, Unused):  # nothing reads it in this branch
            return
        if not is_element(node) and self.element_statement and "fill" in self.target.calls:
            # a branch that is a number, of a value that is an array in the other branch: the number fills
            # the value's register, so that what reads the value reads an array in either branch (an
            # operation whose operands are all numbers would resize its ``out=`` buffer to 0-d)
            reg = self.regs.of(name)
            self.lines.append(Op("fill", (self.scalar(node),), _reg(reg)))
            self.lines.append(Bind(name, Name(_reg(reg))))
            return
        if isinstance(node, Name) or not is_element(node):
            self.lines.append(Bind(name, self.scalar(node)))
            return
        reg = self.regs.of(name)
        value, _ = self.operand(node, out=reg)
        if value != Name(_reg(reg)):  # not an operation: an expression
            self.regs.named.pop(name)
            self.regs.give(reg)
            self.lines.append(Bind(name, value))
            return
        last = self.lines[-1]
        if isinstance(last, CopyInto) or (isinstance(last, Op) and last.op in _NO_RESULT):
            self.lines.append(Bind(name, value))
        else:
            self.lines[-1] = dataclasses.replace(self.lines[-1], bind=name)

    def compound(self, form: str, name: str, node: Expr) -> bool:
        """``x += c*y``, ``x += c*a*b`` and ``x += c*a/b`` (or ``-=``; c a Python value, 1 if none) as one
        in-place call."""
        node = self.fold(node, absorb=True) or node
        scaled = self.scaled(node)
        by_array = self.scaled(node, array=True) if scaled is None else None
        if by_array is not None:
            # a scale that is an array (LAMB's trust ratio): x.addcmul_(y, c) takes it as a tensor (alpha=
            # would read it with .item()), in one pass
            value, reg = self.operand(by_array[0])
            self.lines.append(
                Compound("addcmul", name, (value, by_array[1]), _MINUS_ONE if form == "sub" else None)
            )
            self.regs.give(reg)
            return True
        x, c = scaled if scaled is not None else (node, None)
        if isinstance(x, Bin) and x.op == "**" and _is_two(x.b):
            x = Bin("*", x.a, x.a)  # x**2 is x*x
        two = isinstance(x, Bin) and x.op in ("*", "/") and is_element(x.a) and is_element(x.b)
        if not two and scaled is None:
            return False
        if form == "sub":
            c = _MINUS_ONE if c is None else Minus(c)
        if two:
            a, reg_a = self.operand(x.a)
            b, reg_b = self.operand(x.b)
            method = "addcmul" if x.op == "*" else "addcdiv"
            self.lines.append(Compound(method, name, (a, b), c))
            self.regs.give(reg_a)
            self.regs.give(reg_b)
        else:
            value, reg = self.operand(x)
            self.lines.append(Compound("add", name, (value,), c))
            self.regs.give(reg)
        return True

    def update(self, form: str, name: str, node: Expr) -> None:
        if self.target.compound and self.compound(form, name, node):
            return
        value, reg = self.operand(node)
        self.lines.append(Update(form, name, value))
        self.regs.give(reg)

    def overwrite(self, name: str, node: Expr) -> None:
        value, _ = self.operand(node, out=name)
        if value != Name(_reg(name)):
            self.lines.append(Update("set", name, value))

    def statement(self, tree: Expr, write) -> Lowered:
        """A value ``a if cond else b`` with a Python condition is an ``if`` block per branch."""
        branched = False
        self.element_statement = is_element(tree)

        def visit(n: Expr) -> None:
            nonlocal branched
            if isinstance(n, IfExp) and not is_element(n.test):
                branched = True
                # a branch that leaves the value as it is writes nothing, and Python has no empty block: the
                # test is negated, or dropped
                test = self.scalar(n.test)
                start = len(self.lines)
                visit(n.body)
                body = tuple(self.lines[start:])
                del self.lines[start:]
                visit(n.orelse)
                orelse = tuple(self.lines[start:])
                del self.lines[start:]
                if body:
                    self.lines.append(If(test, body, orelse))
                elif orelse:
                    self.lines.append(If(test, orelse, negated=True))
                return
            write(self, n)

        visit(tree)
        for reg in self.held:
            self.regs.give(reg)
        self.held = []
        return Lowered(tuple(self.lines), branched)


def verify(lowered: Lowered, registers: Registers) -> None:
    """The storage of a statement's operations is sound (for the tests, between passes): every scratch
    register it reads was written before in the statement, or holds a named temporary; a named
    temporary's register is written only by the statement that binds that name; and where operations
    take a mask (a select's branches), a register computed only where a mask holds is read only there
    (``_Regions``). Raises ``ValueError`` naming the register and the statement."""
    scratch = set(registers.names()) | set(registers.mask_names())
    owner = {r: n for n, r in registers.named.items()}
    bound = {s.bind for s in _flat(lowered.body) if isinstance(s, Op)} | {
        s.name for s in _flat(lowered.body) if isinstance(s, Bind)
    }

    def check(body: tuple[Stmt, ...], written: set[str], regions: _Regions) -> None:
        for s in body:
            if isinstance(s, If):
                _reading(_reads(s.test), written, scratch, owner, s)
                check(s.body, set(written), regions.copy())
                check(s.orelse, set(written), regions.copy())
                continue
            _reading(_stmt_reads(s), written, scratch, owner, s)
            regions.step(s)
            out = s.out.name if isinstance(s, (Op, CopyInto)) else None
            if out in owner and owner[out] not in bound:
                raise ValueError(f"{s}: writes {out}, the register of {owner[out]}, which it does not bind")
            if out is not None:
                written.add(out)

    check(lowered.body, set(), _Regions())


class _Regions:
    """Where each register holds its value, as a condition over the statement's tests (a comparison into a
    mask is a new atom; ``not``, ``and``, ``or`` of masks their logic): true unless an operation under a
    mask wrote it. An operation under mask ``K`` (true without one) may read a register only where it
    holds (``K`` implies its region); its result holds on ``K``. A masked copy ``copy_where(d, x, K)``
    reads ``x`` on ``K`` and extends ``d``'s region by ``K``; a copy passes the region on."""

    def __init__(self) -> None:
        self.region: dict[str, sp.Basic] = {}  # register -> where it holds (absent: everywhere)
        self.masks: dict[str, sp.Basic] = {}  # mask register -> its condition
        self.atoms = 0

    def copy(self) -> _Regions:
        other = _Regions()
        other.region, other.masks, other.atoms = dict(self.region), dict(self.masks), self.atoms
        return other

    def where(self, e: Expr | None) -> sp.Basic:
        """The condition a mask expression stands for (true for none; a fresh atom for a name not known)."""
        if e is None:
            return sp.true
        key = e.value.name if isinstance(e, Name) else repr(e)
        if key not in self.masks:  # a boolean array the statement did not compute (a named value)
            self.atoms += 1
            self.masks[key] = sp.Symbol(f"mask{self.atoms}")
        return self.masks[key]

    def holds(self, e: Expr, on: sp.Basic, s) -> None:
        for name in reads(e):
            region = self.region.get(name, sp.true)
            if region is not sp.true and sp.satisfiable(on & ~region):
                raise ValueError(
                    f"{s}: reads {name} where it was not computed ({region} does not cover {on})"
                )

    def step(self, s: Stmt) -> None:
        if isinstance(s, CopyInto):  # a copy holds where its source does
            if isinstance(s.x, Name):
                self.region[s.out.name] = self.region.get(s.x.value.name, sp.true)
            else:
                self.holds(s.x, sp.true, s)
                self.region.pop(s.out.name, None)
            return
        if not isinstance(s, Op):
            for e in _stmt_exprs(s):
                self.holds(e, sp.true, s)
            return
        out = s.out.name
        if s.op == "copy_where":
            mask, value = s.args
            on = self.where(mask)
            self.holds(value, on, s)
            self.region[out] = self.region.get(out, sp.true) | on
            return
        on = self.where(s.mask)
        for e in [*s.args, *(v for _, v in s.keywords)]:
            self.holds(e, on, s)
        if s.op in _MIRROR:
            self.atoms += 1
            self.masks[out] = sp.Symbol(f"mask{self.atoms}")
        elif s.op in _LOGIC:
            conds = [self.where(a) for a in s.args]
            self.masks[out] = {
                "not": lambda c: ~c[0],
                "and": lambda c: c[0] & c[1],
                "or": lambda c: c[0] | c[1],
            }[s.op](conds)
        if on is sp.true:
            self.region.pop(out, None)
        else:
            self.region[out] = on


def _reading(names: set[str], written: set[str], scratch: set[str], owner: dict, s) -> None:
    for n in names & scratch:
        if n not in written and n not in owner:
            raise ValueError(f"{s}: reads the scratch register {n} before this statement writes it")


def _reads(e: Expr) -> set[str]:
    return reads(e)


def _stmt_exprs(s: Stmt) -> list[Expr]:
    if isinstance(s, Op):
        return [*s.args, *(v for _, v in s.keywords)] + ([s.mask] if s.mask is not None else [])
    if isinstance(s, CopyInto):
        return [s.x]
    if isinstance(s, (Bind, Update)):
        return [s.value]
    if isinstance(s, Compound):
        return [*s.args] + ([s.scale] if s.scale is not None else [])
    return []


def _stmt_reads(s: Stmt) -> set[str]:
    exprs = _stmt_exprs(s)
    return set().union(*(_reads(e) for e in exprs)) if exprs else set()


def _flat(body: tuple[Stmt, ...]):
    for s in body:
        if isinstance(s, If):
            yield from _flat(s.body)
            yield from _flat(s.orelse)
        else:
            yield s
