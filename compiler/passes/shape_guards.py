"""Shape guards: a value that only the branch of a test on the tensor's shape reads is computed only for
the tensors that take that branch.

A rule chooses per tensor with a test on its shape: ``where(Eq(rank, 2), muon, adam)`` (Muon's steps for
the matrices, Adam's for the rest), ``where(rows > cols, tall, wide)`` (the smaller Gram matrix). Such a
test reads only the tensor's shape and dtype (``rank``, ``rows``, ``cols``, ``size``, ``machine_epsilon``)
and values computed from them and numbers: it is a Python value in every backend (a shape is static under
JAX's ``jit``). This pass finds, in each loop over the tensors, the ``let``\\ s (and compiler temporaries)
that are read only under such tests, through the values that read them in turn, and makes each
``where(test, value, Unused())``: a Python conditional (``None`` where the branch is not taken: nothing
reads it there), so a tensor that does not take the branch does not compute the value (a vector does not run Muon's Newton-Schulz steps; a tall matrix does not form the
larger Gram matrix). A value read anywhere without such a test is left as it is. ``guards.py`` does the
same for once-per-step values under tests of the step.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..ir import Assign, Case, Program, Role, SectionKind, Unused, base, ssa
from .guards import guarded, reads_under, weaken
from .typing import computed_from, number_names, python_hypers

#: what the rule names, what the compiler names for it, and the reductions over the tensor the loop computes
_GUARDED = (Role.LET, Role.TEMP, Role.REDUCE)


def static_names(program: Program) -> set[str]:
    """The tensor's shape and dtype (``typing.number_names``: the rank, the rows...), and every ``let`` or
    temporary that each case computes from them and numbers only: Python values in every backend."""
    numbers = number_names(program)
    known = numbers | python_hypers(program)  # and the flags, integers, whether an option is given
    statements = [a for c in program.cases for a in c.body]
    return numbers | computed_from(statements, {a.target for a in statements if a.role in _GUARDED}, known)


def guard_shape_values(program: Program) -> Program:
    static = static_names(program)
    cases = tuple(_guard_case(c, static) for c in program.cases) if static else program.cases
    return program.replace(cases=cases, passes=program.passes + ("guard_shape_values",))


def _guard_case(case: Case, static: set[str]) -> Case:
    changed: dict[sp.Symbol, sp.Basic] = {}
    sections = []
    for section in case.sections:
        if section.kind == SectionKind.TENSOR:
            section = dataclasses.replace(section, body=_shape_first(section.body, static))
            changed.update(_section_guards(section.body, static))
        sections.append(section)
    return guarded(dataclasses.replace(case, sections=tuple(sections)), changed, Unused())


def _shape_first(body: tuple[Assign, ...], static: set[str]) -> tuple[Assign, ...]:
    """The loop's statements with those computed from the tensor's shape alone first (in their order): they
    read nothing the loop computes (the parameter's shape and dtype, whichever version of it they named),
    and a test of the shape can then guard any value of the loop."""

    def moved(a: Assign) -> Assign:
        w = {x: sp.Symbol("w") for x in a.expr.free_symbols if base(x) == "w"}
        return dataclasses.replace(a, expr=a.expr.xreplace(w)) if w else a

    first = [moved(a) for a in body if a.target in static and a.role in _GUARDED]
    return tuple(first + [a for a in body if not (a.target in static and a.role in _GUARDED)])


def _section_guards(body: tuple[Assign, ...], static: set[str]) -> dict[sp.Symbol, sp.Basic]:
    """The condition under which each value of one loop over the tensors is read, where it is a test on the
    shape computed before the value (none where the value is read without one)."""
    position = {ssa(a.target, a.version): i for i, a in enumerate(body)}
    wanted = {ssa(a.target, a.version) for a in body if a.role in _GUARDED and a.target not in static}
    guards: dict[sp.Symbol, sp.Basic] = {}
    for a in reversed(body):  # a value's readers come after it: their own guards are known by then
        target = ssa(a.target, a.version)
        outer = guards.get(target, sp.true) if target in wanted else sp.true
        for symbol, condition in reads_under(a.expr, sp.true):
            if symbol not in wanted:
                continue
            at = position[symbol]

            def computed(s: sp.Symbol, at: int = at) -> bool:
                return base(s) in static and position.get(s, -1) < at

            read = weaken(sp.And(outer, condition), computed)  # the tests of the shape, the rest dropped
            guards[symbol] = sp.Or(guards.get(symbol, sp.false), read)
    out = {}
    for symbol, condition in guards.items():
        condition = sp.simplify_logic(condition) if condition.free_symbols else condition
        if condition is not sp.true and condition is not sp.false:
            out[symbol] = condition
    return out
