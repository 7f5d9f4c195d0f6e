"""Shapes: which axes of the tensor a per-element value has reduced to length 1.

A per-element value is shaped like the parameter (``FULL``), or has some of its axes reduced to length 1
by a reduction over an axis (``tensor_mean(g**2, axis=-1)``: one value per row, ``(..., m, 1)`` for an
``(..., m, n)`` parameter). Operands broadcast: the shape of an operation keeps every axis that an operand
keeps (a row times a column is a matrix again). A state's shape is that of the values assigned to it (a
fixpoint, as for scopes): Adafactor's row and column moments are stored as ``m + n`` values for an
``m x n`` matrix. A shape is the frozenset of the reduced axes, counted from the last (-1, -2...); values
that are not per element (a number, one per tensor) have none (``None``: they broadcast against any).

The plain backends allocate a reduced state with the tensor's shape reduced (``runtime.common.state_shape``)
and write a statement whose value is a row into scratch registers of the row's shape (``Registers.file``);
a value of another shape than its statement's is computed whole at its own (``evaluation.Types``).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import AxisReduction, Reduction
from ..errors import RuleError
from ..ir import Broadcast, Program, Role, Scope, base
from ..render import math_text
from .scope import scopes_of, unversioned

FULL: frozenset[int] = frozenset()  # no axis reduced: shaped like the parameter


def join(a: frozenset[int] | None, b: frozenset[int] | None) -> frozenset[int] | None:
    """The shape of an operation on two operands: broadcasting keeps every axis either keeps."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def shape_of(expr: sp.Basic, shapes: dict[str, frozenset[int] | None]) -> frozenset[int] | None:
    """The shape of an expression given the shape of every name it reads (None: not per element)."""
    if isinstance(expr, sp.Symbol):
        return shapes.get(base(expr))
    if isinstance(expr, (Reduction, Broadcast)):  # a Broadcast takes the statement's shape
        return None
    if isinstance(expr, AxisReduction):
        inner = shape_of(expr.args[0], shapes)
        return (FULL if inner is None else inner) | {expr.axis}
    found = None
    for arg in expr.args:
        found = join(found, shape_of(arg, shapes))
    return found


def shapes_of(program: Program, case=None) -> dict[str, frozenset[int] | None]:
    """The shape of every name of a program (after infer_scopes): ``w``, ``g`` and every per-element value
    shaped like the parameter unless reduced; the fixpoint over every case and the states' initial
    values. With ``case`` (after infer_shapes): the states' shapes as stored, every other name's as that
    case computes it (a value that is a row in one case and the tensor's shape in another)."""
    scopes = scopes_of(program)
    shapes: dict[str, frozenset[int] | None] = {n: None for n in scopes}
    shapes.update({"w": FULL, "g": FULL, "update": FULL})
    stored = set()
    for s in program.states:
        if s.scope == Scope.ELEMENT:
            shapes[s.name] = shape_of(s.init, shapes)
            if case is not None and "infer_shapes" in program.passes:
                shapes[s.name], stored = frozenset(s.reduced), stored | {s.name}
    statements = [a for c in program.cases for a in c.body] if case is None else list(case.body)
    changed = True
    while changed:
        changed = False
        for a in statements:
            if scopes.get(a.target) != Scope.ELEMENT and a.role not in (Role.PARAM, Role.GRAD):
                continue
            if a.target in stored:
                continue
            new = join(shapes.get(a.target), shape_of(a.expr, shapes))
            if new != shapes.get(a.target):
                shapes[a.target] = new
                changed = True
    for name, scope in scopes.items():  # a per-element value assigned only numbers is still an array
        if scope == Scope.ELEMENT and shapes.get(name) is None:
            shapes[name] = FULL
    return shapes


def infer_shapes(program: Program) -> Program:
    """Each per-element state's shape (``StateVar.reduced``: the axes reduced to length 1), and a reduction
    over a whole tensor of a reduced value refused (``tensor_mean`` divides by the tensor's size)."""
    shapes = shapes_of(program)
    for case in program.cases:
        for a in case.body:
            for node in sp.preorder_traversal(a.expr):
                if isinstance(node, Reduction) and not node.from_shape and shape_of(node.args[0], shapes):
                    raise RuleError(
                        program.rule,
                        f"`{math_text(unversioned(node))}` reduces a whole tensor of values reduced over axis"
                        f" {sorted(shape_of(node.args[0], shapes))}: a mean would divide by the tensor's size",
                        **program.written(a.equation),
                        hint="reduce it over the axes it keeps (tensor_mean(x, axis=-2)), or reduce the"
                        " per-element value",
                    )
    states = tuple(
        dataclasses.replace(s, reduced=tuple(sorted(shapes[s.name] or ()))) if s.scope == Scope.ELEMENT else s
        for s in program.states
    )
    return program.replace(states=states, passes=program.passes + ("infer_shapes",))
