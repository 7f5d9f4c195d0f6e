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

from ..dsl import AxisBySize, AxisReduction, CoverMax, CoverMin, MatrixOp, Reduction, Transposed
from ..errors import RuleError
from ..ir import Broadcast, Program, Role, Scope, base
from ..render import math_text
from .scope import scopes_of, unversioned

FULL: frozenset[int] = frozenset()  # no axis reduced: shaped like the parameter
#: SM3's cover (``cover_max``): one vector per axis, ``m + n`` values for an ``m x n`` matrix; combined only
#: with numbers and other covers, read per element by ``cover_min``
COVER = "cover"

#: A shape: the axes reduced (a frozenset, FULL: none), or, for what a matrix operation makes, the last two
#: axes as a pair of "m" (the parameter's rows), "n" (its columns) or 1: ``("m", "m")`` is ``X @ X^T`` of an
#: ``m x n`` parameter, ``("n", "m")`` its transpose. A pair that is the parameter's with axes reduced is
#: written as those axes (``("m", 1)`` is ``{-1}``): one shape, one spelling.
Shape = frozenset | tuple | str


class ShapeError(ValueError):
    """Operands whose shapes cannot go together (``X @ X`` of an ``m x n`` matrix; an ``m x m`` value plus
    an ``m x n`` one): the pass that finds it names the equation."""


def as_pair(shape: Shape) -> tuple:
    """The last two axes of a shape as a pair of "m", "n" or 1."""
    if isinstance(shape, tuple):
        return shape
    if shape - {-1, -2}:
        raise ShapeError(f"a matrix operation on a value reduced over axis {sorted(shape - {-1, -2})}")
    return (1 if -2 in shape else "m", 1 if -1 in shape else "n")


def canonical(pair: tuple) -> Shape:
    """A pair as the axes it reduces where it is the parameter's shape with axes reduced."""
    r, c = pair
    if r in ("m", 1) and c in ("n", 1):
        return frozenset(axis for axis, d in ((-2, r), (-1, c)) if d == 1)
    return pair


def join(a: Shape | None, b: Shape | None) -> Shape | None:
    """The shape of an operation on two operands: broadcasting keeps every axis either keeps (an axis of
    length 1 takes the other's; two lengths that differ are an error)."""
    if a is None:
        return b
    if b is None:
        return a
    if COVER in (a, b):
        if a != b:
            raise ShapeError(
                f"a cover (one vector per axis, from cover_max) and a value of shape {words(b if a == COVER else a)}"
                " do not broadcast: read the cover per element with cover_min"
            )
        return a
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a & b
    out = []
    for x, y in zip(as_pair(a), as_pair(b)):
        if x != 1 and y != 1 and x != y:
            raise ShapeError(f"a value of shape {words(a)} and one of shape {words(b)} do not broadcast")
        out.append(y if x == 1 else x)
    return canonical(tuple(out))


def _matrix_shape(expr: MatrixOp, shapes: dict) -> Shape:
    operands = []
    for arg in expr.args:
        inner = shape_of(arg, shapes)
        if inner is None:
            raise ShapeError(
                f"`{math_text(unversioned(expr))}` takes `{math_text(unversioned(arg))}`, a value that is not per"
                " element, as a matrix: multiply by it instead"
            )
        operands.append(as_pair(inner))
    if isinstance(expr, Transposed):
        ((r, c),) = operands
        return canonical((c, r))
    (r1, c1), (r2, c2) = operands
    if c1 != r2:
        raise ShapeError(
            f"a matrix product of a value of shape {words(operands[0])} and one of shape {words(operands[1])}:"
            " the columns of the first are not the rows of the second"
        )
    return canonical((r1, c2))


def words(shape: Shape) -> str:
    """A shape as the documentation writes it: ``m x n``, ``m x 1``, ``m x m``."""
    if shape == COVER:
        return "m + n (one vector per axis)"
    r, c = as_pair(shape) if not (isinstance(shape, frozenset) and shape - {-1, -2}) else ("?", "?")
    return f"{r} x {c}"


def suffix(shape: Shape) -> str:
    """A shape in a state's or a scratch buffer's scope (``runtime.common.state_shape``): ``/-1`` for a row,
    ``/mm`` for an ``m x m`` value; empty for the parameter's shape."""
    if shape == COVER:
        return "/" + COVER
    if isinstance(shape, tuple):
        return "/" + "".join(str(d) for d in shape)
    return "".join(f"/{token(axis)}" for axis in sorted(shape, key=axis_order))


def axis_order(axis) -> tuple:
    """The order axes are listed in: -2 before -1, then the axes the lengths choose."""
    if axis == COVER:
        return (2, 0)
    return (1, axis.rank_by_size) if isinstance(axis, AxisBySize) else (0, axis)


def token(axis) -> str:
    """An axis in a scope: ``-1``; or the axis the tensor's lengths choose, ``largest``, ``second_largest``."""
    return axis.token if isinstance(axis, AxisBySize) else str(axis)  # COVER is its own token


def shape_of(expr: sp.Basic, shapes: dict[str, Shape | None]) -> Shape | None:
    """The shape of an expression given the shape of every name it reads (None: not per element)."""
    if isinstance(expr, sp.Symbol):
        return shapes.get(base(expr))
    if isinstance(expr, (Reduction, Broadcast)):  # a Broadcast takes the statement's shape
        return None
    if isinstance(expr, AxisReduction):
        inner = shape_of(expr.args[0], shapes)
        inner = FULL if inner is None else inner
        if isinstance(inner, tuple):
            if expr.axis not in (-1, -2):
                raise ShapeError(f"a reduction over axis {expr.axis} of a value of shape {words(inner)}")
            r, c = inner
            return canonical((r, 1) if expr.axis == -1 else (1, c))
        return inner | {expr.axis}
    if isinstance(expr, MatrixOp):
        return _matrix_shape(expr, shapes)
    if isinstance(expr, (CoverMax, CoverMin)):
        _check_cover(expr, shape_of(expr.args[0], shapes), final=False)
        return COVER if isinstance(expr, CoverMax) else FULL
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
                shapes[s.name] = COVER if COVER in s.reduced else frozenset(s.reduced)
                stored = stored | {s.name}
    statements = [a for c in program.cases for a in c.body] if case is None else list(case.body)
    changed = True
    while changed:
        changed = False
        for a in statements:
            if scopes.get(a.target) != Scope.ELEMENT and a.role not in (Role.PARAM, Role.GRAD):
                continue
            if a.target in stored:
                continue
            try:
                new = join(shapes.get(a.target), shape_of(a.expr, shapes))
            except ShapeError as exc:
                raise RuleError(
                    program.rule,
                    f"{exc} (in `{math_text(unversioned(a.expr))}`)",
                    **program.written(a.equation),
                    hint="a matrix operation takes the last two axes: m x n times n x k; a value of another"
                    " shape than the parameter's is combined only with values it broadcasts against",
                ) from None
            if new != shapes.get(a.target):
                shapes[a.target] = new
                changed = True
    for name, scope in scopes.items():  # a per-element value assigned only numbers is still an array
        if scope == Scope.ELEMENT and shapes.get(name) is None:
            shapes[name] = FULL
    return shapes


def _check_cover(expr: sp.Basic, inner: Shape | None, final: bool) -> None:
    """``cover_max`` takes a value per element of the parameter's shape, ``cover_min`` a cover. While the
    fixpoint runs a state's shape may not be known yet (None); ``final``: it is."""
    wanted = FULL if isinstance(expr, CoverMax) else COVER
    if inner == wanted or (inner is None and not final):
        return
    what = (
        "a value per element, shaped like the parameter"
        if wanted == FULL
        else "a cover (a state assigned cover_max(...))"
    )
    found = "a value that is not per element" if inner is None else f"of shape {words(inner)}"
    raise ShapeError(
        f"`{math_text(unversioned(expr))}` takes {what}; `{math_text(unversioned(expr.args[0]))}` is {found}"
    )


def _check_whole_reductions(a, shapes: dict) -> None:
    """A reduction over a whole tensor reads a value of the parameter's shape (a mean divides by its size)."""
    for node in sp.preorder_traversal(a.expr):
        if isinstance(node, Reduction) and not node.from_shape:
            inner = shape_of(node.args[0], shapes)
            if inner:
                raise ShapeError(
                    f"`{math_text(unversioned(node))}` reduces a whole tensor of values of shape {words(inner)},"
                    " not the parameter's m x n: a mean would divide by the parameter's size"
                )


def infer_shapes(program: Program) -> Program:
    """Each per-element state's shape (``StateVar.reduced``: the axes reduced to length 1), and a reduction
    over a whole tensor of a reduced value refused (``tensor_mean`` divides by the tensor's size)."""
    shapes = shapes_of(program)
    for case in program.cases:
        for a in case.body:
            try:
                _check_whole_reductions(a, shapes)
                for node in sp.preorder_traversal(a.expr):
                    if isinstance(node, (CoverMax, CoverMin)):
                        _check_cover(node, shape_of(node.args[0], shapes), final=True)
            except ShapeError as exc:
                raise RuleError(
                    program.rule,
                    str(exc),
                    **program.written(a.equation),
                    hint="reduce a value of another shape than the parameter's over its axes"
                    " (tensor_mean(x, axis=-2)), or reduce the per-element value",
                ) from None
    for s in program.states:
        if s.scope == Scope.ELEMENT and isinstance(shapes[s.name], tuple):
            raise RuleError(
                program.rule,
                f"the state `{s.name}` would be stored with shape {words(shapes[s.name])}: a state is shaped like"
                " the parameter (m x n), or with axes reduced (a row, a column)",
                hint="keep the parameter's shape in the state (a matrix product back to m x n), or recompute"
                " the value every step with a let",
            )
    states = tuple(
        dataclasses.replace(s, reduced=_reduced(shapes[s.name])) if s.scope == Scope.ELEMENT else s
        for s in program.states
    )
    return program.replace(states=states, passes=program.passes + ("infer_shapes",))


def _reduced(shape: Shape | None) -> tuple:
    """A state's shape as ``StateVar.reduced`` holds it: the axes reduced, in order; ``(COVER,)``."""
    return (COVER,) if shape == COVER else tuple(sorted(shape or (), key=axis_order))
