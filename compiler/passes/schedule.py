"""Scheduling: split each case into sections run once per step, or as a loop over the tensors.

A reduction over all tensors needs a pass over the tensors before any value that reads it; a reduction
whose argument reads another's result (the gradient normalised by its global norm, then summed: or any
reduction of a gradient that Keras's ``global_clipnorm`` clipped first) needs a pass after that one. So
the sections of a case are, for ``K`` the length of the longest such chain (the number of passes)::

    step 0, reduce 1, step 1, reduce 2, ..., reduce K, step K, tensor

* ``step k``: values with one value per step that need the results of the first ``k`` passes and no
  more (bias corrections and global state such as Nadam's ``u_product`` in ``step 0``; a global state
  assigned from a reduction after the pass that computes it);
* ``reduce j``: one loop over the tensors that computes together every reduction over all tensors that
  needs exactly ``j - 1`` passes before it; the per-element and per-tensor statements they read are
  replayed inside it as local values (role ``replay``), so a pass writes nothing;
* ``tensor``: the loop that updates the state and the parameters.

Each statement goes to the earliest section its inputs allow (and a new version of a global name no
earlier than the previous one). A global value is a name that holds one value at a time, so when a
statement that runs later than a global's new version still reads its previous version (the update
reads a global state's value from before the step, while a pass reads the new one), the previous value
is kept under a name of its own first (``d_prev = d``, role ``let``), and that statement reads it.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Reduction
from ..ir import Assign, Program, Role, Scope, Section, SectionKind, base, ssa, version

#: where a statement runs: step sections at even positions 0, 2, ..., 2K; pass j at 2j - 1; the loop last
LOOP = 10**9


def schedule(program: Program) -> Program:
    cases = tuple(
        dataclasses.replace(c, body=body, sections=sections)
        for c in program.cases
        for body, sections in [schedule_body(c.body)]
    )
    return program.replace(cases=cases, passes=program.passes + ("schedule",))


def passes_over_all_tensors(sections: tuple[Section, ...]) -> int:
    """The number of passes over the tensors before the loop that updates them."""
    return sum(s.kind == SectionKind.REDUCE for s in sections)


def _is_global_reduction(a: Assign) -> bool:
    return a.role == Role.REDUCE and a.scope == Scope.GLOBAL


def _is_step(a: Assign) -> bool:
    return a.scope <= Scope.GLOBAL and not _is_global_reduction(a)


def schedule_body(body: tuple[Assign, ...]) -> tuple[tuple[Assign, ...], tuple[Section, ...]]:
    """One form of a case: its body (with any previous values kept under names of their own) and sections."""
    if not body:
        return body, ()
    body = _keep_previous_values(body, _positions(body))
    position = _positions(body)  # the same: a kept value is known where the value it keeps is
    definitions = {a.lhs: a for a in body}
    out: list[Section] = []

    def add(kind: str, assigns: list[Assign]) -> None:
        if assigns:
            out.append(Section(kind, tuple(dataclasses.replace(a, section=len(out)) for a in assigns)))

    for p in sorted({position[a.lhs] for a in body if position[a.lhs] != LOOP}):
        if p % 2 == 0:
            add(SectionKind.STEP, [a for a in body if _is_step(a) and position[a.lhs] == p])
            continue
        reductions = [a for a in body if _is_global_reduction(a) and position[a.lhs] == p]
        needed = _closure(reductions, definitions)
        replays = [dataclasses.replace(a, role=Role.REPLAY) for a in body if a.lhs in needed]
        add(SectionKind.REDUCE, replays + reductions)
    add(SectionKind.TENSOR, [a for a in body if not _is_step(a) and not _is_global_reduction(a)])
    return body, tuple(out)


def tensor_reduction_pass(section: Section) -> Section | None:
    """The reductions over one tensor of a loop that updates the tensors (``TENSOR``), as a pass over all
    the tensors before it (``REDUCE``: the values their arguments read replayed, nothing written), for a
    backend whose reductions over one tensor communicate (torch's DTensors: a sharded tensor's sum is a
    sum of its shards' sums, and one pass all-reduces every tensor's together instead of one collective
    per tensor). None where the loop has none, or where one of them is computed under a condition or reads
    another (the values would need more than one pass)."""
    if section.kind != SectionKind.TENSOR:
        return None
    reductions = [a for a in section.body if a.role == Role.REDUCE and a.scope == Scope.TENSOR]
    if not reductions or not all(isinstance(a.expr, Reduction) for a in reductions):
        return None
    definitions = {a.lhs: a for a in section.body}
    needed = _closure(reductions, definitions)
    if any(definitions[s].role == Role.REDUCE for s in needed):
        return None
    replays = [dataclasses.replace(a, role=Role.REPLAY) for a in section.body if a.lhs in needed]
    return Section(SectionKind.REDUCE, tuple(replays + reductions))


def _positions(body: tuple[Assign, ...]) -> dict[sp.Symbol, int]:
    """The position of each statement's section: step k at 2k, pass j at 2j - 1, the loop at LOOP. A
    statement goes to the first section at which what it reads is known (``ready``), and a new version of
    a global name no earlier than the previous one."""
    position: dict[sp.Symbol, int] = {}
    ready: dict[sp.Symbol, int] = {}
    last: dict[str, int] = {}  # the position of the latest version of each global name
    for a in body:
        needs = max((ready.get(s, 0) for s in a.expr.free_symbols), default=0)
        if _is_global_reduction(a):
            position[a.lhs] = needs + 1
            ready[a.lhs] = needs + 2
        elif _is_step(a):
            position[a.lhs] = ready[a.lhs] = max(needs, last.get(a.target, 0))
            last[a.target] = position[a.lhs]
        else:
            position[a.lhs] = LOOP
            ready[a.lhs] = needs  # what a pass that replays it needs first
    return position


def _runs_at(body: tuple[Assign, ...], position: dict[sp.Symbol, int]) -> list[list[int]]:
    """For each statement, the positions it runs at: its own, and the passes that replay it."""
    definitions = {a.lhs: a for a in body}
    at = [[position[a.lhs]] for a in body]
    index = {a.lhs: i for i, a in enumerate(body)}
    for a in body:
        if _is_global_reduction(a):
            for s in _closure([a], definitions):
                at[index[s]].append(position[a.lhs])
    return at


def _keep_previous_values(body: tuple[Assign, ...], position: dict[sp.Symbol, int]) -> tuple[Assign, ...]:
    """Statements that run after a global name's new version but read an earlier one read a copy of it."""
    at = _runs_at(body, position)
    copies: dict[sp.Symbol, sp.Symbol] = {}  # an earlier version -> the name that keeps it
    taken = {a.target for a in body}
    rewrites: dict[int, dict[sp.Symbol, sp.Symbol]] = {}
    for i, a in enumerate(body):
        if not _is_step(a):
            continue
        for j in range(i):
            reader = body[j]
            old = [s for s in reader.expr.free_symbols if base(s) == a.target and version(s) < a.version]
            if not old or max(at[j]) <= position[a.lhs]:
                continue
            for s in old:
                if s not in copies:
                    name = f"{a.target}_prev" if version(s) == 0 else f"{a.target}_{version(s)}"
                    while name in taken:
                        name += "_"
                    taken.add(name)
                    copies[s] = ssa(name, 1)
                rewrites.setdefault(j, {})[s] = copies[s]
    if not copies:
        return body
    out: list[Assign] = []
    kept = {s: Assign(c.name.partition(".")[0], 1, s, Role.LET, Scope.GLOBAL) for s, c in copies.items()}
    out += [kept[s] for s in kept if version(s) == 0]
    for i, a in enumerate(body):
        out.append(dataclasses.replace(a, expr=a.expr.xreplace(rewrites[i])) if i in rewrites else a)
        out += [kept[s] for s in kept if s == a.lhs]
    return tuple(out)


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
