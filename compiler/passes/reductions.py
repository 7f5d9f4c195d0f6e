"""Reductions: each distinct reduction becomes one named value, computed once before its first use.

``v <- b2*v + (1 - b2)*||g||^2`` and ``u = g/sqrt(v + eps)`` read ``||g||^2``
once, as ``sumsq_g``; the schedule then computes it in the loop over the
tensors (a per-tensor reduction) or in a pass over all tensors (a global one).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Accumulate, Over, Reduction
from ..ir import Assign, Program, Role, Scope, base, ssa
from .guards import weaken
from .scope import reduction_scope, scopes_of


def extract_reductions(program: Program) -> Program:
    scopes = scopes_of(program)
    cases = tuple(dataclasses.replace(c, body=_extract(c.body, scopes)) for c in program.cases)
    return program.replace(cases=cases, passes=program.passes + ("extract_reductions",))


def _is_reduction(node: sp.Basic) -> bool:
    return isinstance(node, Reduction)


def name_of_reduction(node: sp.Basic, taken: set[str]) -> str:
    """``sumsq_g`` for the sum of squares of g, ``sum_x``, ``max_abs_g``, else ``red0``..."""
    (arg,) = node.args
    kind = node.accumulate
    scope = "" if node.over == Over.TENSOR else "global_"
    name = None
    if node.name:
        name = f"{scope}{node.name}"
    elif (
        isinstance(arg, sp.Pow)
        and arg.exp == 2
        and isinstance(arg.base, sp.Symbol)
        and kind == Accumulate.SUM
    ):
        name = f"{scope}sumsq_{base(arg.base)}"
    elif isinstance(arg, sp.Abs) and isinstance(arg.args[0], sp.Symbol):
        name = f"{scope}{kind}_abs_{base(arg.args[0])}"
    elif isinstance(arg, sp.Symbol):
        name = f"{scope}{kind}_{base(arg)}"
    n = 0
    candidate = name or f"{scope}red{n}"
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}" if name else f"{scope}red{n}"
    return candidate


def _extract(body: tuple[Assign, ...], scopes: dict[str, Scope]) -> tuple[Assign, ...]:
    out: list[Assign] = []
    found: dict[sp.Basic, sp.Symbol] = {}
    taken = {a.target for a in body}
    paths = _paths(body)
    assigned = {ssa(a.target, a.version) for a in body}
    defined: set[sp.Symbol] = set()  # the values assigned before the statement being read
    for a in body:
        nodes = [n for n in sp.postorder_traversal(a.expr) if _is_reduction(n) and n not in found]
        for node in dict.fromkeys(nodes):
            name = name_of_reduction(node, taken)
            taken.add(name)
            found[node] = sp.Symbol(name)
            scope = reduction_scope(node)

            def known(symbol: sp.Symbol, scope: Scope = scope) -> bool:
                """A value the reduction's own step can test, where it is computed: no wider than it, and
                there already (an input, or assigned before its first reader)."""
                there = symbol not in assigned or symbol in defined
                return there and scopes.get(base(symbol), Scope.CONST) <= scope

            # a test of each element cannot decide whether a whole tensor's value is computed: dropped
            guard = sp.simplify_logic(sp.Or(*(weaken(path, known) for path in paths[node])))
            expr = node if guard is sp.true else sp.Piecewise((node, guard), (0, True))
            out.append(Assign(name, 0, expr, Role.REDUCE, scope, label=""))
        out.append(dataclasses.replace(a, expr=a.expr.xreplace(found)) if found else a)
        defined.add(ssa(a.target, a.version))
    return tuple(out)


def _paths(body: tuple[Assign, ...]) -> dict[sp.Basic, list]:
    """For each reduction, the conditions of the where-branches it is used in (computed only then)."""
    paths: dict[sp.Basic, list] = {}

    def walk(e, path):
        if _is_reduction(e):
            paths.setdefault(e, []).append(path)
            return
        if isinstance(e, sp.Piecewise):
            previous = sp.true
            for value, cond in e.args:
                walk(cond, sp.And(path, previous))  # a test reads its reductions where it is evaluated
                walk(value, sp.And(path, previous, cond))
                previous = sp.And(previous, sp.Not(cond))
            return
        for arg in e.args:
            walk(arg, path)

    for a in body:
        walk(a.expr, sp.true)
    return paths
