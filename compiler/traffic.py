"""Memory traffic of one step, from the state analysis: the bytes a step must move per parameter.

An optimizer step is memory-bound. Per parameter element it must read the parameter, the gradient and
every per-element state that persists (and exists under the given hyperparameters), and write the
parameter and those states back. Per-tensor and global state, and reductions whose tensor stays in
cache, cost nothing per element. This is the floor the benchmark divides by the measured bandwidth.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from .ir import Program, Scope


def element_states(program: Program, hypers: dict[str, Any] | None = None) -> list[str]:
    """The per-element states stored with these hyperparameters (the rule's defaults for the others)."""
    values = {h.name: h.default for h in program.hypers}
    values.update(hypers or {})
    out = []
    for s in program.states:
        if not s.persists or s.scope != Scope.ELEMENT or s.reduced:
            continue  # a row or a column (an axis reduced): m + n values of an m x n matrix, not one per element
        cond = sp.sympify(s.allocated_when)
        subs = {}
        for x in cond.free_symbols:
            name = x.name
            if name.endswith("?"):  # Given(option)
                subs[x] = sp.true if values.get(name[:-1]) is not None else sp.false
            elif name in values:
                v = values[name]
                subs[x] = (sp.true if v else sp.false) if isinstance(v, bool) else sp.sympify(v)
            else:
                raise ValueError(f"{program.rule}: state {s.name} exists if {cond}, which reads {name!r}")
        value = cond.subs(subs)
        if value not in (sp.true, sp.false):
            raise ValueError(
                f"{program.rule}: cannot decide whether state {s.name} exists ({cond} -> {value})"
            )
        if value is sp.true:
            out.append(s.name)
    return out


def bytes_per_param(program: Program, hypers: dict[str, Any] | None = None, itemsize: int = 4) -> int:
    """Read w, g and each per-element state; write w and each per-element state."""
    n = len(element_states(program, hypers))
    return itemsize * ((2 + n) + (1 + n))


# -- communication when the parameters are sharded ------------------------------------------------------


def _decide(cond: Any, values: dict[str, Any], program: Program, what: str) -> bool:
    """A static condition over flags, options (``x?``: given) and hyperparameter tests, with these values;
    a condition on a value only known at run time (``is_update``) is taken as true: an update call."""
    cond = sp.sympify(cond)
    subs = {}
    for x in cond.free_symbols:
        name = x.name
        if name.endswith("?"):
            subs[x] = sp.true if values.get(name[:-1]) is not None else sp.false
        elif name in values:
            v = values[name]
            subs[x] = (sp.true if v else sp.false) if isinstance(v, bool) else sp.sympify(v)
        else:
            subs[x] = sp.true  # decided at run time: on an update call, true
    value = sp.simplify_logic(cond.subs(subs)) if subs else cond
    if value not in (sp.true, sp.false):
        raise ValueError(f"{program.rule}: cannot decide whether {what} ({cond} -> {value})")
    return value is sp.true


def communication(program: Program, hypers: dict[str, Any] | None = None) -> dict[str, Any]:
    """What one update step all-reduces when every parameter tensor is sharded over devices.

    A reduction over one tensor (NovoGrad's ``||g||^2``, ``clipnorm``'s norm) adds the shards' partial
    results: one scalar per tensor; a reduction over all tensors (``global_clipnorm``) one scalar. The
    reductions a pass over the tensors computes can travel together, so the collectives are the passes
    that reduce: those over all tensors before the update, and the update's own per-tensor reductions.
    Element-wise work communicates nothing. Returns ``per_tensor`` and ``over_all`` (the reductions, as
    written), ``collectives`` and ``scalars(tensors)``, the number of values all-reduced per step.

    A rule whose step needs each tensor whole (``analysis.whole_tensor_reason``: an axis reduction, a
    matrix product) gathers each sharded tensor (torch): ``gathered`` names the arrays of a parameter that
    are all-gathered, one collective each (the parameter, the gradient, each state shaped like the
    parameter; a state with an axis reduced is kept whole on every device), and its own reductions are
    computed on the whole tensors, without a collective; the options' reductions stay. Elsewhere
    ``gathered`` is empty. ``kept`` maps each gathered state that only some tensors keep
    (``StateVar.kept``) to its test of the tensor's shape: the others gather nothing for it."""
    from .analysis import whole_tensor_reason
    from .ir import Role, SectionKind, base
    from .render import math_text

    values = {h.name: h.default for h in program.hypers}
    values.update(hypers or {})
    gathered: list[str] = []
    local: set[str] = set()  # reductions computed on whole tensors
    if whole_tensor_reason(program):
        own = program.inner or program
        local = {a.target for c in own.cases for s in c.sections for a in s.body if a.role == Role.REDUCE}
        gathered = ["w", "g"] + [
            s.name
            for s in own.states
            if s.persists
            and s.scope == Scope.ELEMENT
            and not s.reduced
            and _decide(s.allocated_when, values, program, f"state {s.name} exists")  # momentum=None: no m
        ]
    case = next(
        (c for c in program.cases if _decide(c.condition, values, program, "case applies")), program.cases[-1]
    )
    per_tensor: list[str] = []
    over_all: list[str] = []
    collectives = 0
    for section in case.sections:
        defined = {a.lhs: a for a in section.body}
        depth: dict[sp.Symbol, int] = {}  # a reduction's collective, counted along chains of reductions

        def level(symbol: sp.Symbol) -> int:
            if symbol not in depth:
                a = defined[symbol]
                below = max((level(s) for s in a.expr.free_symbols if s in defined), default=0)
                depth[symbol] = below + (a.lhs in reducing)
            return depth[symbol]

        reducing = set()
        for a in section.body:
            if a.role != Role.REDUCE:
                continue
            expr, cond = a.expr, sp.true
            if isinstance(expr, sp.Piecewise):
                (expr, cond), _ = expr.args
            if not _decide(cond, values, program, f"{a.target} is computed"):
                continue
            if section.kind == SectionKind.REDUCE and a.scope != Scope.GLOBAL:
                continue  # recomputed for a reduction over all tensors: its partial sums stay local
            if getattr(expr, "from_shape", False):
                continue  # the element count: every device knows the tensor's shape
            if a.target in local:
                continue  # a reduction of the gathered, whole tensor
            reducing.add(a.lhs)
            (over_all if a.scope == Scope.GLOBAL else per_tensor).append(
                math_text(expr.xreplace({s: sp.Symbol(base(s)) for s in expr.free_symbols}))
            )
        collectives += max((level(s) for s in reducing), default=0)
    return {
        "per_tensor": per_tensor,
        "over_all": over_all,
        "collectives": collectives,
        "scalars": lambda tensors: len(per_tensor) * tensors + len(over_all),
        "gathered": gathered,
        "kept": {s.name: s.kept for s in program.states if s.name in gathered and s.kept is not sp.true},
    }
