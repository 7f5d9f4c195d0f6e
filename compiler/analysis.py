"""Facts about a compiled program that the backends' layouts need, computed once from the IR.

``param_condition``: the static condition (over hyperparameters, flags and ``Given``) under which the
increment form reads the parameter ``w``. JAX's ``update(grads, state)`` needs ``params`` only then, as
``optax.nadam`` does not ask for them: a rule that never reads ``w`` with ``weight_decay`` and ``use_ema``
off works without them.
"""

from __future__ import annotations

import sympy as sp

from .dsl import (
    AxisReduction,
    CoverMax,
    CoverMin,
    Given,
    LargestLength,
    MachineEpsilon,
    MatrixOp,
    MatrixProduct,
    SecondLargestLength,
    TensorCols,
    TensorRank,
    TensorRows,
    Transposed,
)
from .ir import Form, Program

W = sp.Symbol("w")


def is_static(cond: sp.Basic, constants: set[str]) -> bool:
    """Whether a condition reads only constants: hyperparameters, flags, ``Given(x)``."""
    return all((s.option if isinstance(s, Given) else s.name) in constants for s in cond.free_symbols)


def static_part(cond: sp.Basic, constants: set[str]) -> sp.Basic:
    """A static condition implied by ``cond``: its static conjuncts (true when it has none)."""
    if cond is sp.true or is_static(cond, constants):
        return cond
    if isinstance(cond, sp.And):
        return sp.And(*[c for c in cond.args if is_static(c, constants)])
    return sp.true


def reads_when(expr: sp.Basic, symbol: sp.Symbol, constants: set[str]) -> sp.Basic:
    """The static condition under which evaluating ``expr`` may read ``symbol`` (a branch of a ``where``
    whose condition is static is read only when it holds; a dynamic condition may choose either)."""
    if expr == symbol:
        return sp.true
    if symbol not in expr.free_symbols:
        return sp.false
    if isinstance(expr, sp.Piecewise):
        return sp.Or(
            *[
                sp.And(static_part(cond, constants), reads_when(value, symbol, constants))
                for value, cond in expr.args
            ],
            *[reads_when(cond, symbol, constants) for _, cond in expr.args if not isinstance(cond, bool)],
        )
    return sp.Or(*[reads_when(a, symbol, constants) for a in expr.args])


def param_condition(program: Program) -> sp.Basic:
    """When the increment form (JAX) reads ``w``: a static condition, simplified (``false``: never)."""
    if program.form != Form.INCREMENT:
        raise ValueError(f"param_condition asks about the increment form; this program is {program.form}")
    constants = {h.name for h in program.hypers}
    when = sp.Or(
        *[
            sp.And(case.condition, reads_when(a.expr, W, constants))
            for case in program.cases
            for a in case.body
        ]
    )
    return sp.simplify_logic(when) if when not in (sp.true, sp.false) else when


def static_conditions(program: Program) -> list[sp.Basic]:
    """The conditions that decide which computation an update runs: the cases' conditions, when a state
    exists, when the update reads the parameters, and each condition of a ``where`` that reads nothing
    but hyperparameters (Python tests it). ``program`` is in the increment form (JAX's)."""
    names = {h.name for h in program.hypers}
    out = [param_condition(program)]
    out += [case.condition for case in program.cases]
    out += [sp.sympify(s.allocated_when) for s in program.states]
    for case in program.cases:
        for a in case.body:
            for node in sp.preorder_traversal(a.expr):
                if isinstance(node, sp.Piecewise):
                    for _, cond in node.args:
                        symbols = sp.sympify(cond).free_symbols
                        if symbols and all(str(s) in names or isinstance(s, Given) for s in symbols):
                            out.append(sp.sympify(cond))
    return out


def static_hypers(program: Program) -> set[str]:
    """The hyperparameters whose values decide which computation an update runs (in JAX they cannot be
    traced): those the :func:`static_conditions` read. ``program`` is in the increment form (JAX's)."""
    names = {h.name for h in program.hypers}
    return {str(s) for c in static_conditions(program) for s in c.free_symbols if str(s) in names}


def switch_hypers(program: Program) -> set[str]:
    """The real hyperparameters that the static conditions read only as ``h == 0`` or ``h != 0``, where 0
    turns a computation off (SGD's momentum, NovoGrad's weight_decay) and that computation with ``h = 0``
    is the one it replaces: checked here, symbolically, for every case (its new parameter increment and
    states, each expanded over the case's statements). Given as an array (``optax.inject_hyperparams``,
    traced), such a number takes the computation that is on, as optax's own optimizers do."""
    floats = {h.name for h in program.hypers if h.kind == "float"}
    out = set()
    for name in static_hypers(program) & floats:
        h = sp.Symbol(name)
        tested = [_read_as(c, h, on=True) for c in static_conditions(program)]
        # the rule's own program (Keras's options, wrapped around it, read no such number)
        if all(h not in sp.sympify(c).free_symbols for c in tested) and _off_equals_on_at_zero(
            program.inner or program, h
        ):
            out.add(name)
    return out


def _read_as(expr: sp.Basic, h: sp.Symbol, on: bool) -> sp.Basic:
    """``expr`` with each test of ``h`` against 0 decided: ``h != 0`` true (``on``) or false."""
    return sp.sympify(expr).replace(
        lambda e: isinstance(e, (sp.Eq, sp.Ne)) and set(e.args) == {h, sp.S.Zero},
        lambda e: sp.true if isinstance(e, sp.Ne) == on else sp.false,
    )


def _final_values(body) -> dict[str, sp.Basic]:
    """Each name a case assigns, its last value, expanded over the statements before it."""
    env: dict = {}
    final: dict[str, sp.Basic] = {}
    for a in body:
        env[a.lhs] = value = sp.sympify(a.expr).xreplace(env)
        final[a.target] = value
    return final


def _off_equals_on_at_zero(program: Program, h: sp.Symbol) -> bool:
    """Whether each case's computation with ``h != 0`` taken as true and then ``h = 0`` gives what the case
    that ``h = 0`` selects gives (the update and the states both assign)."""
    for on_case in program.cases:
        on_cond = _read_as(on_case.condition, h, on=True)
        if on_cond is sp.false:
            continue
        on = {k: _read_as(v, h, on=True).subs(h, 0) for k, v in _final_values(on_case.body).items()}
        for off_case in program.cases:
            off_cond = _read_as(off_case.condition, h, on=False)
            if off_cond is sp.false or not sp.satisfiable(sp.And(on_cond, off_cond)):
                continue
            off = {k: _read_as(v, h, on=False).subs(h, 0) for k, v in _final_values(off_case.body).items()}
            if not all(_same(on[k], off[k]) for k in on.keys() & off.keys()):
                return False
    return True


def _same(a: sp.Basic, b: sp.Basic) -> bool:
    """Whether two expanded values are equal for every input (numbers or conditions)."""
    if a == b:
        return True
    if isinstance(a, sp.logic.boolalg.Boolean) or isinstance(b, sp.logic.boolalg.Boolean):
        return not sp.satisfiable(sp.Xor(a, b))
    return sp.expand(a - b) == 0 or sp.simplify(a - b) == 0


def _first(program: Program, types: tuple[type, ...]) -> tuple[sp.Basic, str] | None:
    """The first node of one of ``types`` in the program's equations, with its equation as written: in the
    first equation that has one, the one of the earliest of ``types`` (SymPy's order of an ``And``'s
    operands is not the same in every process)."""
    for number, eq in enumerate(program.equations, 1):
        found = [node for node in sp.preorder_traversal(eq.expr) if isinstance(node, types)]
        if found:
            node = min(found, key=lambda n: next(i for i, t in enumerate(types) if isinstance(n, t)))
            return node, program.written(number)["equation"]
    return None


#: what a node that the kernels or a shard cannot compute is, in a message
_WHAT = {
    TensorRank: "the tensor's rank",
    TensorRows: "the tensor's rows",
    TensorCols: "the tensor's columns",
    LargestLength: "the tensor's longest axis",
    SecondLargestLength: "the tensor's second longest axis",
    MachineEpsilon: "the dtype's machine epsilon",
    MatrixProduct: "a matrix product",
    Transposed: "a transpose",
    CoverMax: "a cover by the tensor's slices (cover_max)",
    CoverMin: "a cover read per element (cover_min)",
}


#: what the kernels (Numba's, Triton's) do not compute: a reduction over one axis, a matrix operation, a
#: cover, a value read from the tensor's shape or dtype (``shape_class`` finds the tensors whose step
#: reads none of them)
KERNEL_OBSTACLES = (AxisReduction, MatrixOp, TensorRank, TensorRows, TensorCols, LargestLength) + (
    SecondLargestLength,
    MachineEpsilon,
    CoverMax,
    CoverMin,
)


def kernel_obstacle(program: Program) -> str:
    """Why the kernel backends (Numba's, Triton's) print no kernels for a program, or ``""`` where they do:
    a reduction over one axis (a row or a column of a matrix), a matrix operation, or a value read from the
    tensor's shape or dtype is not lowered into a kernel yet. The plain paths run such a rule in every framework."""
    found = _first(program, KERNEL_OBSTACLES)
    if found is None:
        return ""
    node, equation = found
    what = _WHAT.get(type(node), "a reduction over one axis")
    return f"{what} (equation {equation}) is not lowered into kernels yet"


def whole_tensor_reason(program: Program) -> str:
    """Why a step of the program needs each parameter whole, or ``""`` where it runs on a shard of it: a
    reduction over one axis (a row of a matrix sharded by rows is on one device, a column is not), a cover
    (SM3's maximum over all axes but one) or a matrix operation (``X X^T`` of a matrix sharded by rows needs every row). torch gathers such a rule's
    sharded parameters (DTensors, FSDP2's) for its update (``runtime/torch_support.py``); JAX's ``jit``
    partitions the program itself. A reduction over the whole tensor does not need it: the shards' partial
    sums are added."""
    found = _first(program, (AxisReduction, MatrixOp, CoverMax, CoverMin))
    if found is None:
        return ""
    node, equation = found
    return f"{_WHAT.get(type(node), 'a reduction over one axis')} (equation {equation})"
