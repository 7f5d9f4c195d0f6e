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
        if not s.persists or s.scope != Scope.ELEMENT:
            continue
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
