"""Scheduling: split each case into sections run once per step, or as a loop over the tensors.

The sections of a case, in order:

1. ``step``: values with one value per step that need no reduction over all
   tensors (bias corrections, global state such as Nadam's ``u_product``);
2. ``reduce``: one loop over the tensors that computes every reduction over all
   tensors of the step together (one pass for the group, however many uses);
   the per-element statements they depend on are replayed inside it as local
   values (role ``replay``), so the pass writes nothing;
3. ``step``: values of one per step that read those reductions (a clip factor);
4. ``tensor``: the loop that updates state and parameters;
5. ``step``: a global assignment that a tensor-level statement above it still
   reads the old value of (write-after-read; the previous learning rate kept for
   the next step), and what reads it, after the loop; the step values that the
   loop reads stay before it.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..errors import RuleError
from ..ir import Assign, Program, Scope, Section, base


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
    after_reduction = _depends_on(body, {a.lhs for a in reductions})

    before: list[Assign] = []  # step values needed before the reductions
    reduce: list[Assign] = []
    between: list[Assign] = []  # step values that read a reduction
    loop: list[Assign] = []
    after: list[Assign] = []  # global assignments that must wait for the loop
    definitions = {a.lhs: a for a in body}
    needed = _closure(reductions, definitions)
    waits: set[sp.Symbol] = set()  # versions assigned after the loop
    for a in body:
        if a.scope > Scope.GLOBAL and a.expr.free_symbols & waits:
            eq = program.equations[a.equation - 1] if a.equation else None
            raise RuleError(
                program.rule,
                f"`{a.lhs} = {a.expr}` reads {sorted(str(s) for s in a.expr.free_symbols & waits)}, a value of"
                " the step that the loop over the tensors must not see before it has read the previous one;"
                " that takes two passes over the tensors, which the scheduler does not do",
                equation=f"{a.equation} `{eq.text()}`" if eq else None,
                origin=eq.origin if eq else None,
                hint="assign the value of the step last (after every equation that reads it)",
            )
        if a.lhs in needed and not _is_global_reduction(a):
            reduce.append(dataclasses.replace(a, role="replay"))
        if _is_global_reduction(a):
            reads = set(a.expr.free_symbols).union(*(definitions[s].expr.free_symbols for s in needed))
            nested = sorted(str(s) for s in reads | needed if s in after_reduction)
            if nested:
                raise RuleError(
                    program.rule,
                    f"the reduction over all tensors `{a.expr}` reads {nested}, which need another such reduction"
                    " first; that takes two passes over the tensors, which the scheduler does not do",
                    hint="express it with one reduction over all tensors",
                )
            reduce.append(a)
        elif a.scope <= Scope.GLOBAL:
            # after the loop only what must wait for it: a write the loop still reads the old value of (a
            # global state such as the previous learning rate, kept for the next step), or what reads or
            # overwrites such a later value; a value of the step that the loop reads stays before it
            if (
                a.expr.free_symbols & waits
                or a.target in {base(s) for s in waits}
                or any(a.target in {base(s) for s in b.expr.free_symbols} | {b.target} for b in loop)
            ):
                after.append(a)
                waits.add(a.lhs)
            elif a.lhs in after_reduction:
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


def _depends_on(body: tuple[Assign, ...], roots: set[sp.Symbol]) -> set[sp.Symbol]:
    """Versions whose value depends, through any chain of assignments, on one of ``roots``."""
    found = set(roots)
    for a in body:
        if a.expr.free_symbols & found:
            found.add(a.lhs)
    return found - roots


def _closure(reductions: list[Assign], definitions: dict[sp.Symbol, Assign]) -> set[sp.Symbol]:
    """The per-tensor and per-element values the reductions' arguments are computed from."""
    needed: set[sp.Symbol] = set()
    todo = [s for a in reductions for s in a.expr.free_symbols]
    while todo:
        s = todo.pop()
        d = definitions.get(s)
        if d is None or d.scope <= Scope.GLOBAL or s in needed:
            continue  # an input (g, w, state at the start of the step) or a once-per-step value
        needed.add(s)
        todo += list(d.expr.free_symbols)
    return needed
