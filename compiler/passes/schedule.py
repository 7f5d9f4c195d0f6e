"""Scheduling: split each case into sections run once per step or once per tensor.

Values with one value per step (the step's scalars: bias corrections, global
state) go into a ``step`` section before the loop over the tensors, unless a
tensor-level statement above them in the rule still reads what they overwrite;
then they open a new step section after that loop. Reductions over all
tensors (the next issue's global norms) use the same mechanism.
"""

from __future__ import annotations

import dataclasses

from ..ir import Assign, Program, Scope, Section, base


def schedule(program: Program) -> Program:
    for case in program.cases:
        for a in case.body:
            if a.role == "reduce" and a.scope == Scope.GLOBAL:
                from ..errors import RuleError

                raise RuleError(program.rule, f"the reduction over all tensors `{a.expr}` is not supported by the scheduler yet")
    cases = tuple(
        dataclasses.replace(c, sections=_sections(c.body), functional_sections=_sections(c.functional))
        for c in program.cases
    )
    return program.replace(cases=cases, passes=program.passes + ("schedule",))


def _sections(body: tuple[Assign, ...]) -> tuple[Section, ...]:
    sections: list[tuple[str, list[Assign]]] = [("step", []), ("tensor", [])]
    for a in body:
        if a.scope <= Scope.GLOBAL:
            loop = sections[-1][1]
            blocked = any(a.target in {base(s) for s in b.expr.free_symbols} or b.target == a.target for b in loop)
            if blocked:
                sections += [("step", []), ("tensor", [])]
            sections[-2][1].append(a)
        else:
            sections[-1][1].append(a)
    out = []
    for kind, assigns in sections:
        if assigns:
            out.append(Section(kind, tuple(dataclasses.replace(a, section=len(out)) for a in assigns)))
    return tuple(out)
