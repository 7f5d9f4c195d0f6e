"""Scheduling: split each case into sections run once per step, or as a loop over the tensors.

The sections of a case, in order:

1. ``step``: values with one value per step that need no reduction over all
   tensors (bias corrections, global state such as Nadam's ``u_product``);
2. ``reduce``: one loop over the tensors that computes every reduction over all
   tensors of the step together (one pass for the group, however many uses);
   per-element values they read are recomputed inside it (inlined), so the
   pass writes nothing;
3. ``step``: values of one per step that read those reductions (a clip factor);
4. ``tensor``: the loop that updates state and parameters;
5. ``step``: a global assignment that a tensor-level statement above it still
   reads the old value of (write-after-read), after the loop.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..errors import RuleError
from ..ir import Assign, Program, Scope, Section, base, version


def schedule(program: Program) -> Program:
    cases = tuple(
        dataclasses.replace(
            c,
            sections=_sections(program, c.body),
            functional_sections=_sections(program, c.functional),
        )
        for c in program.cases
    )
    return program.replace(cases=cases, passes=program.passes + ("schedule",))


def _is_global_reduction(a: Assign) -> bool:
    return a.role == "reduce" and a.scope == Scope.GLOBAL


def _sections(program: Program, body: tuple[Assign, ...]) -> tuple[Section, ...]:
    reductions = [a for a in body if _is_global_reduction(a)]
    after_reduction = _depends_on(body, {a.target for a in reductions})

    before: list[Assign] = []  # step values needed before the reductions
    reduce: list[Assign] = []
    between: list[Assign] = []  # step values that read a reduction
    loop: list[Assign] = []
    after: list[Assign] = []  # global assignments that must wait for the loop
    definitions = {a.lhs: a for a in body}
    for a in body:
        if _is_global_reduction(a):
            nested = sorted(base(s) for s in a.expr.free_symbols if base(s) in after_reduction)
            if nested:
                raise RuleError(
                    program.rule,
                    f"the reduction over all tensors `{a.expr}` reads {nested}, which need another such reduction"
                    " first; that takes two passes over the tensors, which the scheduler does not do",
                    hint="express it with one reduction over all tensors",
                )
            reduce.append(dataclasses.replace(a, expr=_inline(program, a, definitions)))
        elif a.scope <= Scope.GLOBAL:
            if after or any(a.target in {base(s) for s in b.expr.free_symbols} | {b.target} for b in loop):
                after.append(a)
            elif a.target in after_reduction:
                between.append(a)
            else:
                before.append(a)
        else:
            loop.append(a)
    out = []
    for kind, assigns in (
        ("step", before),
        ("reduce", reduce),
        ("step", between),
        ("tensor", loop),
        ("step", after),
    ):
        if assigns:
            out.append(Section(kind, tuple(dataclasses.replace(a, section=len(out)) for a in assigns)))
    return tuple(out)


def _depends_on(body: tuple[Assign, ...], roots: set[str]) -> set[str]:
    """Names whose value depends, through any chain of assignments, on one of ``roots``."""
    found = set(roots)
    for a in body:
        if any(base(s) in found for s in a.expr.free_symbols):
            found.add(a.target)
    return found - roots


def _inline(program: Program, a: Assign, definitions: dict[sp.Symbol, Assign]) -> sp.Expr:
    """The reduction's argument in terms of values a fresh pass over the tensors has: the step's inputs."""
    states = {s.name for s in program.states}
    expr = a.expr
    for _ in range(len(definitions) + 1):
        subs = {}
        for s in expr.free_symbols:
            d = definitions.get(s)
            if d is None or d.scope <= Scope.GLOBAL:
                continue  # an input (g, w, state at the start of the step) or a once-per-step value
            if d.role in ("state", "param") or (base(s) in states and version(s) > 0):
                raise RuleError(
                    program.rule,
                    f"the reduction over all tensors `{a.expr}` reads `{base(s)}` after equation {d.equation}"
                    " updated it; a pass over all tensors cannot see values updated later in the same loop",
                    hint="compute the reduction from values at the start of the step (g, w, state), before any update",
                )
            subs[s] = d.expr
        if not subs:
            return expr
        expr = expr.xreplace(subs)
    return expr
