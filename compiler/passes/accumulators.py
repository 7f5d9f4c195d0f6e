"""Reductions over all tensors as accumulators: what a pass over the tensors computes.

A reduction over all tensors (``global_clipnorm``'s sum of squares) is computed in a pass over the
tensors (a ``reduce`` section, ``schedule.py``): an accumulator starts at the reduction's identity
before the loop, and each tensor adds its own reduction (``acc + TensorSum(x)``, ``Max(acc,
TensorMax(x))``). Where the reduction is only computed under a condition, its static part is a Python
test around the accumulation (no ``else: acc = acc``) and its dynamic part (JAX's traced step) a select.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sympy as sp

from ..dsl import Accumulate, TensorMax, TensorSum
from ..ir import Role, Section
from .conditions import split


@dataclasses.dataclass(frozen=True)
class Accumulator:
    name: str  # the reduction's name, which the accumulator takes
    kind: Accumulate  # sum (starts at 0) or max (starts at -inf)
    step: sp.Basic  # its new value after one tensor (reads the accumulator's symbol)
    static: sp.Basic = sp.true  # the Python condition under which a tensor accumulates


def accumulators(section: Section, arrays: Iterable[str]) -> tuple[Accumulator, ...]:
    """One accumulator per reduction of a pass over all tensors, in order (the replayed values it reads
    are the section's ``REPLAY`` statements)."""
    out = []
    for a in section.body:
        if a.role == Role.REPLAY:
            continue
        acc = sp.Symbol(a.target)
        expr, guard = a.expr, sp.true
        if isinstance(expr, sp.Piecewise):  # computed only under a condition
            (expr, guard), _ = expr.args
        (arg,) = expr.args
        kind = expr.accumulate
        step = acc + TensorSum(arg) if kind == Accumulate.SUM else sp.Max(acc, TensorMax(arg))
        static, dynamic = split(guard, arrays) if guard is not sp.true else (sp.true, sp.true)
        if dynamic is not sp.true:
            step = sp.Piecewise((step, dynamic), (acc, True))
        out.append(Accumulator(a.target, kind, step, static))
    return tuple(out)
