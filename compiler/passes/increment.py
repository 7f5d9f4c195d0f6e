"""The increment form: ``update = w_new - w``, derived symbolically.

optax-style transformations return the change of the parameter, not its new
value. Subtracting at run time (``(w + d) - w``) loses the low bits of ``d``
when ``|w| >> |d|``; instead each assignment ``w.k = w.(k-1) + d_k`` is split
symbolically into its increment ``d_k``, and the case's body (in the increment form)
accumulates ``update = d_1 + d_2 + ...``. A later read of ``w.k`` reads
``w + update.k``: the value ``optax.apply_updates`` will produce.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Reduction
from ..ir import Assign, Case, Form, Program, Role, Scope, ssa


def split_increment(new: sp.Expr, old: sp.Symbol) -> sp.Expr:
    """``new - old`` without a run-time subtraction when ``new`` is ``old + d`` (in every branch of a where)."""
    if new == old:
        return sp.S.Zero
    if isinstance(new, sp.Piecewise):
        return sp.Piecewise(*[(split_increment(v, old), c) for v, c in new.args])
    if isinstance(new, sp.Add) and old in new.args:
        return sp.Add(*[a for a in new.args if a != old])
    return new - old


def derive_increment(program: Program) -> Program:
    """The program in the increment form: each case's body assigns ``update``, never ``w``."""
    cases = tuple(dataclasses.replace(c, body=_increment(c)) for c in program.cases)
    return program.replace(cases=cases, form=Form.INCREMENT, passes=program.passes + ("derive_increment",))


def _from_shape(x: sp.Basic) -> bool:
    return isinstance(x, Reduction) and x.from_shape


def _increment(case: Case) -> tuple[Assign, ...]:
    out: list[Assign] = []
    subs: dict[sp.Symbol, sp.Expr] = {}
    n = 0
    for a in case.body:
        # the tensor's size, rank and dtype are the parameter's, whatever step wrote it: read from ``w``
        # itself, not from ``w + update`` (which an array learning rate may promote: JAX's machine epsilon
        # of a bfloat16 parameter read as float32's after a weight decay)
        shaped = a.expr.replace(_from_shape, lambda x: type(x)(sp.Symbol("w")))
        if a.role != Role.PARAM:
            out.append(dataclasses.replace(a, expr=shaped.xreplace(subs)))
            continue
        old = ssa("w", a.version - 1)
        d = split_increment(shaped, old).xreplace(subs)  # a step after another reads the shape of w too
        n += 1
        total = d if n == 1 else ssa("update", n - 1) + d
        out.append(
            dataclasses.replace(
                a, target="update", version=n, expr=total, role=Role.UPDATE, scope=Scope.ELEMENT
            )
        )
        subs[a.lhs] = sp.Symbol("w") + ssa("update", n)
    return tuple(out)
