"""The IR: a few frozen dataclasses, the only things the passes pass around.

A :class:`Program` is a rule after lowering: its declarations and one
:class:`Case` per combination of static conditions (flags, hyperparameter
tests such as ``momentum == 0``). Each case is straight-line code in SSA form:
every assignment defines a new version of its target, ``m`` (the value at the
start of the step), ``m.1``, ``m.2``... Backends print every version of a name
with the same identifier; the verifier checks that no overwritten version is
read afterwards.

Scopes say how many values a quantity has: one for the optimizer's life
(``CONST``: hyperparameters), one per step (``GLOBAL``: the step, the learning
rate, global state and reductions over all tensors), one per parameter tensor
(``TENSOR``: per-tensor state, reductions over one tensor) or one per element
(``ELEMENT``: the shape of the parameter).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import sympy as sp

from .dsl import Equation, Hyper, own_equation


class Form(enum.StrEnum):
    """What a program's cases compute: the new parameter in place (NumPy, torch, the kernels) or the
    change of the parameter, ``update = w_new - w`` (JAX: what an optax transformation returns). The
    pipeline forks after the state analysis (``pipeline.compile_rule``); a backend names its form."""

    IN_PLACE = "in-place"
    INCREMENT = "increment"


class Scope(enum.IntEnum):
    CONST = 0
    GLOBAL = 1
    TENSOR = 2
    ELEMENT = 3

    @property
    def word(self) -> str:
        return {0: "constant", 1: "global", 2: "per tensor", 3: "per element"}[int(self)]


def ssa(name: str, version: int) -> sp.Symbol:
    """The symbol of one version of a name: ``m`` for version 0, ``m.2`` for version 2."""
    return sp.Symbol(name if version == 0 else f"{name}.{version}")


def base(symbol: sp.Symbol) -> str:
    """The name a versioned symbol belongs to."""
    return symbol.name.partition(".")[0]


def version(symbol: sp.Symbol) -> int:
    _, _, v = symbol.name.partition(".")
    return int(v) if v else 0


class Copy(sp.Function):
    """``Copy(x)``: the value of ``x`` now, held apart from ``x``'s storage (``passes/storage.py``). The
    in-place backends print a copy into a scratch buffer; functional backends print ``x``."""

    nargs = 1


class Broadcast(sp.Function):
    """``Broadcast(x)``: ``x`` (a row) copied into a buffer of the statement's shape (the tensor's), where a
    name holds a row in one branch and the tensor's shape in another (``backends/base.py``); no shape of
    its own (``passes/shape.py``: it takes the statement's)."""

    nargs = 1


class Unused(sp.Atom):
    """The value of a name in the branch where nothing reads it (``passes/shape_guards.py``: Muon's steps
    for a tensor that is not a matrix): printed ``None``, so that a read would fail at once, and never
    written into a buffer."""

    is_number = False

    def _latex(self, printer) -> str:
        return r"\text{unused}"


class Upcast(sp.Function):
    """``Upcast(w)``: the parameter read in at least float32 (``passes/upcast.py``), where a reduction reads
    it: a float16 parameter's square would overflow at 256 (``||w||^2`` of a parameter of 300s is inf in
    float16). The plain backends print their ``upcast`` (no copy for float32 and float64); the kernels,
    which compute in their own dtype, read the element."""

    nargs = 1


class AsFloat(sp.Function):
    """``AsFloat(k)``: an integer computed at run time (the step, ``t - 1``, ``imod(t, N)``) read as a real
    number (``passes/integers.py``). A backend whose step is an integer array (JAX) prints a conversion to a
    weakly typed float, as a Python int would be; the others never see it."""

    nargs = 1


class Role(enum.StrEnum):
    """What an assignment writes: it decides how a backend prints it (a buffer updated in place, a name
    bound, an accumulator) and what the passes may do with it."""

    STATE = "state"  # a state variable
    PARAM = "param"  # the parameter w
    GRAD = "grad"  # the gradient g (rewritten by options: loss scaling, clipping)
    LET = "let"  # a named intermediate value
    TEMP = "temp"  # the compiler's: a common subexpression
    UPDATE = "update"  # the increment w_new - w (the increment form)
    REDUCE = "reduce"  # a reduction (over one tensor, or over all tensors)
    REPLAY = "replay"  # a value recomputed inside a pass over all tensors (writes nothing)


class SectionKind(enum.StrEnum):
    """How a section runs: once per step, as a pass over all tensors, or as the loop that updates them."""

    STEP = "step"  # once per step
    REDUCE = "reduce"  # a pass over all tensors: reductions, with the values they read replayed
    TENSOR = "tensor"  # the loop over the tensors that updates state and parameters
    REPLAY = "replay"  # the replayed statements of a pass, printed as a section of their own


@dataclasses.dataclass(frozen=True)
class Assign:
    """``target.version = expr``."""

    target: str
    version: int
    expr: sp.Expr
    role: Role
    scope: Scope = Scope.ELEMENT
    label: str = ""
    equation: int | None = None  # 1-based number of the rule's equation, None for compiler temps
    origin: str = ""
    section: int = 0  # index of the section (see schedule pass) that computes it

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))  # a typo in a role is an error here, not a miss

    @property
    def lhs(self) -> sp.Symbol:
        return ssa(self.target, self.version)


@dataclasses.dataclass(frozen=True)
class StateVar:
    name: str
    init: sp.Expr
    scope: Scope
    meaning: str
    latex: str
    allocated_when: Any  # static condition under which the state exists (sp.true: always)
    declared: Scope | None = None  # the scope the rule declared, if it did
    persists: bool = True  # False: the rule never reads the previous step's value, so nothing is stored
    #: a per-element state's axes reduced to length 1 (passes/shape.py): (-1,) a column of one value per
    #: row, (-2,) a row of one per column; () shaped like the parameter
    reduced: tuple[int, ...] = ()
    #: the test of a tensor's shape under which the state is kept for it (passes/tensor_states.py: torch's
    #: Muon keeps AdamW's second moment for the tensors that are not matrices); sp.true: every tensor's
    kept: Any = sp.true
    #: the constructor keyword that chooses the dtype it is stored in (``Rule.state(..., dtype=)``), or ""
    dtype: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    """A run of assignments: once per step (``STEP``) or in a loop over the tensors: a pass that
    computes reductions over all tensors (``REDUCE``; a case has as many as its chains of reductions
    need, see ``passes/schedule.py``) or the loop that updates them (``TENSOR``, one per case)."""

    kind: SectionKind
    body: tuple[Assign, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SectionKind(self.kind))


@dataclasses.dataclass(frozen=True)
class Case:
    """Straight-line code for one combination of static conditions, in its program's :class:`Form`."""

    condition: Any  # exact sympy boolean over flags and hyperparameter tests; sp.true if unconditional
    body: tuple[Assign, ...]  # assigns ``w`` (in-place form) or ``update`` (increment form)
    test: Any = sp.true  # the condition, simplified given that the earlier cases' tests failed (if/elif/else)
    sections: tuple[Section, ...] = ()

    @property
    def states(self) -> frozenset[str]:
        return frozenset(a.target for a in self.body if a.role == Role.STATE)


#: ``Program.transforms``: the rule specialised to the tensors whose step is element-wise
#: (``compiler/shape_class.py``); its states are updated where the plain path updates them, even where
#: nothing it computes reads them (TorchAdafactor's row moment of a vector): no state of it is dead
SPECIALISED = "shape_class"


@dataclasses.dataclass(frozen=True)
class Program:
    rule: str
    module: str
    title: str
    summary: str
    references: tuple[str, ...]
    file: str
    base: str | None
    hypers: tuple[Hyper, ...]
    states: tuple[StateVar, ...]
    equations: tuple[Equation, ...]  # as written, for documentation
    cases: tuple[Case, ...]
    configs: dict[str, dict[str, Any]]
    passes: tuple[str, ...] = ()
    form: Form = Form.IN_PLACE
    exclusives: tuple[tuple[str, ...], ...] = ()  # options of which at most one may be given
    finalize: tuple[tuple[Any, str], ...] = ()  # (new w, label): what finalize_variable_values assigns
    transforms: tuple[str, ...] = ()  # transforms applied to the rule (e.g. keras_options)
    core: tuple[Equation, ...] = ()  # the rule's own equations as written, when a transform wrapped them
    #: the rule's own program, when a transform wrapped it (Keras's options): the plain backends (NumPy,
    #: torch, JAX) print it and run the options as stages written once in ``runtime/``; the fused kernels
    #: keep the options compiled in (this program)
    inner: Program | None = None
    #: the tensors whose step is element-wise where the whole program's is not (``shape_class``): (their
    #: test, of the shape and of static hyperparameters; the program specialised to them), which the
    #: kernel backends print; None where every tensor's or no tensor's step is element-wise
    kernel_class: tuple[Any, Program] | None = None

    def own(self, number: int) -> tuple[int, Equation]:
        """Equation ``number`` (1-based, of ``equations``) as the rule's author wrote it, and its number
        there: where a transform wrapped the rule's own equations (Keras's options: ``where(is_update, e,
        x)``), the author's equation, numbered as written (``core``); else the equation itself."""
        return own_equation(self.equations, self.core, number)

    def written(self, number: int) -> dict[str, str]:
        """The ``equation`` and ``origin`` of a :class:`RuleError` about equation ``number``: the author's."""
        i, eq = self.own(number)
        return {"equation": f"{i} `{eq.text()}`", "origin": eq.origin}

    def hyper(self, name: str) -> Hyper:
        return next(h for h in self.hypers if h.name == name)

    def state(self, name: str) -> StateVar:
        return next(s for s in self.states if s.name == name)

    @property
    def reads_param(self) -> bool:
        """Whether the increment form reads the parameter's value (JAX's update then needs ``params``)."""
        if self.form != Form.INCREMENT:
            raise ValueError(f"reads_param asks about the increment form; this program is {self.form}")
        w = sp.Symbol("w")
        return any(w in a.expr.free_symbols for c in self.cases for a in c.body)

    @property
    def reads_loss(self) -> bool:
        """Whether the step reads the objective's value (``loss``): each backend's step takes it."""
        return any(base(s) == "loss" for c in self.cases for a in c.body for s in a.expr.free_symbols)

    @property
    def flags(self) -> tuple[Hyper, ...]:
        return tuple(h for h in self.hypers if h.kind == "bool")

    def replace(self, **changes: Any) -> Program:
        return dataclasses.replace(self, **changes)
