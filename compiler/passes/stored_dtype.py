"""A state stored in a dtype of its own (``Rule.state(..., dtype="mu_dtype")``) is stored once, after the
step has read its new value.

optax's ``mu_dtype``: the first moment is computed at the precision of the arithmetic (a float32 moment
plus a float64 gradient is float64), the update reads that value, and only the stored moment is rounded to
``mu_dtype``. The increment form (JAX) does that as written: its new state is a value, cast when it is
stored. In the in-place form (NumPy, torch, the kernels) the state is a buffer of its own dtype: a new value
computed into it would be rounded at once, and every later statement of the step would read the rounded
value. So in the in-place form, where a later statement reads the state's new value, the value is computed
under a name of its own (``new_mu``, a value the printers keep in a scratch buffer) and stored into the
state by one last statement. Where nothing reads it after it is written, the buffer is written as before
(rounding it then is storing it).
"""

from __future__ import annotations

import dataclasses

from ..errors import RuleError
from ..ir import Assign, Program, Role, Scope, base, ssa, version


def hold_stored_states(program: Program) -> Program:
    stored = {s.name for s in program.states if s.dtype and s.persists}
    for s in program.states:
        if s.dtype and (s.scope != Scope.ELEMENT or s.reduced):
            raise RuleError(
                program.rule,
                f"state '{s.name}' takes its dtype from `{s.dtype}`, but it is kept"
                f" {'with axes reduced' if s.reduced else s.scope.word}: a dtype of its own is for a state"
                " shaped like the parameter",
                hint=f"leave dtype= out of the declaration of '{s.name}'",
            )
    cases = tuple(dataclasses.replace(c, body=hold(c.body, stored)) for c in program.cases)
    return program.replace(cases=cases, passes=program.passes + ("hold_stored_states",))


def hold(body: tuple[Assign, ...], stored: set[str]) -> tuple[Assign, ...]:
    """``body`` with each state of ``stored`` whose new value a later statement reads computed as
    ``new_<state>`` and stored by one statement at the end."""
    out = list(body)
    for name in sorted(stored):
        writes = [i for i, a in enumerate(out) if a.target == name and a.role == Role.STATE]
        if not writes or not _read_after_written(out, name, writes[0]):
            continue
        held = f"new_{name}"
        renamed = {ssa(name, out[i].version): ssa(held, out[i].version) for i in writes}
        for i, a in enumerate(out):
            expr = a.expr.xreplace(renamed) if renamed.keys() & a.expr.free_symbols else a.expr
            if i in writes:
                out[i] = dataclasses.replace(a, target=held, expr=expr, role=Role.LET)
            elif expr is not a.expr:
                out[i] = dataclasses.replace(a, expr=expr)
        last = body[writes[-1]]
        out.append(
            Assign(
                name,
                last.version,
                ssa(held, last.version),
                Role.STATE,
                scope=last.scope,
                label=f"{name} stored (in its dtype)",
                equation=last.equation,
                origin=last.origin,
            )
        )
    return tuple(out)


def _read_after_written(body: list[Assign], name: str, first: int) -> bool:
    """Whether a statement after the state's first write reads a version the step wrote."""
    return any(base(s) == name and version(s) > 0 for a in body[first + 1 :] for s in a.expr.free_symbols)
