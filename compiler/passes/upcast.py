"""The parameter in at least float32 where a reduction reads it, as the gradient is.

The gradient reaches the rule in at least float32 (the precision policy: ``runtime.*_support.upcast``), so
its reductions accumulate there; the parameter is updated in place in its own dtype, so a float16
parameter would be squared in float16 by ``||w||^2`` (inf from 256 on: Adafactor's RMS of the parameter)
and summed there. In each reduction's argument, ``w`` is read as ``Upcast(w)``, which the plain backends
print as their ``upcast`` (no copy for float32 and float64) and the kernels as the element they load.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Reduction
from ..ir import Assign, Program, Role, Upcast, base


def upcast_reductions(program: Program) -> Program:
    cases = tuple(dataclasses.replace(c, body=tuple(_upcast(a) for a in c.body)) for c in program.cases)
    return program.replace(cases=cases, passes=program.passes + ("upcast_reductions",))


def _widened(node: Reduction) -> sp.Basic:
    (arg,) = node.args
    params = {s: Upcast(s) for s in arg.free_symbols if isinstance(s, sp.Symbol) and base(s) == "w"}
    return type(node)(arg.xreplace(params)) if params else node


def _upcast(a: Assign) -> Assign:
    if a.role != Role.REDUCE:
        return a
    expr = a.expr.replace(lambda x: isinstance(x, Reduction) and not x.from_shape, _widened)
    return a if expr == a.expr else dataclasses.replace(a, expr=expr)
