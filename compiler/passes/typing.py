"""Typing: which names hold arrays in a backend's step code, and which hold one value per element.

A value is an array (not a Python number) where its scope says so (per tensor, per element), where the
backend says so (JAX: the traced step and learning rate; torch and JAX: a reduction over all tensors is a
0-d array), and where it is computed from an array. Printers and the three-address pass read this; none
of them works it out again.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp

from ..dsl import Given, Reduction
from ..ir import Program, Role, Scope, base


def array_names(
    program: Program,
    scopes: dict[str, Scope],
    *,
    array_scopes: Iterable[Scope],
    always: Iterable[str] = (),
    reductions: bool = False,
    hypers_are_numbers: bool = True,
) -> frozenset[str]:
    """The names whose values are arrays: those of ``array_scopes``, ``always``, the reductions over all
    tensors where ``reductions``, and every name assigned a value that reads one of them (a fixpoint over
    every case)."""
    kinds = set(array_scopes)
    statements = [a for c in program.cases for a in c.body]
    # the tensor's size, rank, rows, columns and epsilon are numbers in every backend (a shape is static
    # under jit), and so is a named value per tensor computed from them and Python numbers only: from the
    # hyperparameters too where they are numbers (not in JAX, whose may be traced arrays: there
    # ``max(h, 1/sqrt(size))`` must be jnp.maximum, so it stays an array)
    numbers = number_names(program)
    values = {h.name for h in program.hypers} if hypers_are_numbers else set()
    known = (numbers | python_hypers(program) | values) - set(always)
    candidates = computed_from(
        statements,
        {
            a.target
            for a in statements
            if a.role in (Role.LET, Role.TEMP) and scopes.get(a.target) == Scope.TENSOR
        },
        known,
    )
    seeded = {n for n, s in scopes.items() if s in kinds and n not in candidates}
    arrays = (seeded - numbers) | set(always)
    if reductions:
        arrays |= {a.target for a in statements if a.role == Role.REDUCE} - numbers
    changed = True
    while changed:
        changed = False
        for a in statements:
            if a.target not in arrays | numbers and any(base(s) in arrays for s in a.expr.free_symbols):
                arrays.add(a.target)
                changed = True
    return frozenset(arrays)


def computed_from(statements, candidates: set[str], known: set[str]) -> set[str]:
    """The largest subset of ``candidates`` that every assignment to them computes from ``known`` names and
    each other only (a fixpoint over ``statements``)."""
    candidates = set(candidates)
    changed = True
    while changed:
        changed = False
        for a in statements:
            if a.target in candidates and not all(
                base(s) in known or base(s) in candidates for s in a.expr.free_symbols
            ):
                candidates.discard(a.target)
                changed = True
    return candidates


def python_hypers(program: Program) -> set[str]:
    """The hyperparameters that are Python values in every backend (JAX takes them static): flags, integers,
    choices (strings), and whether an option is given (``Given(x)``, named ``x?``)."""
    return {h.name for h in program.hypers if h.kind in ("bool", "int", "choice")} | {
        f"{h.name}?" for h in program.hypers
    }


def number_names(program: Program) -> set[str]:
    """The reductions that are Python numbers in every backend (the tensor's rank, its dtype's machine
    epsilon: ``Reduction.number``): a test of one is a Python ``if``, not a select."""
    out = set()
    for case in program.cases:
        for a in case.body:
            found = [x for x in sp.preorder_traversal(a.expr) if isinstance(x, Reduction)]
            if a.role == Role.REDUCE and found and all(x.number for x in found):
                out.add(a.target)
    return out


def element_names(scopes: dict[str, Scope], names: dict[str, str]) -> frozenset[str]:
    """The names (as the backend prints them) that hold one value per element: ``w``, ``g`` and every name
    of per-element scope."""
    return frozenset({"w", "g"} | {names.get(n, n) for n, s in scopes.items() if s == Scope.ELEMENT})


def boolean_names(program: Program) -> set[str]:
    """Flags, and every name assigned a condition (``is_update``), or a copy of one."""
    out = {h.name for h in program.flags}
    changed = True
    while changed:
        changed = False
        for case in program.cases:
            for a in case.body:
                if a.target not in out and is_boolean(a.expr, out):
                    out.add(a.target)
                    changed = True
    return out


def is_boolean(expr: sp.Basic, booleans: set[str]) -> bool:
    """Whether the value is a bool: a condition, an option given, a name that holds one."""
    if isinstance(expr, Given):
        return True
    if isinstance(expr, sp.Symbol):  # a sympy Symbol is also a Boolean: ask what the name holds
        return base(expr) in booleans
    return isinstance(expr, (sp.logic.boolalg.Boolean, sp.core.relational.Relational))
