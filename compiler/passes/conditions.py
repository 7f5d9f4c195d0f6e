"""Static and dynamic conditions: what a backend tests in Python, and what it selects element-wise.

A condition is *static* where it reads no array (a flag, an option given, ``momentum == 0``, the step in
NumPy and torch): Python tests it, so the branch not taken is never computed. It is *dynamic* where it
reads an array (data, or JAX's traced step): an element-wise select. The typing pass says which names are
arrays (``typing.py``); this pass splits conditions accordingly, and printers print the parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sympy as sp

from ..ir import Assign, Role, Section, base


def may_hold(cond: sp.Basic) -> bool:
    """Whether a condition can be true, relations on data and hyperparameters taken as free atoms."""
    atoms: dict = {}

    def atom(node):
        key = sp.Eq(*node.args) if isinstance(node, sp.Ne) else node
        d = atoms.setdefault(key, sp.Dummy())
        return sp.Not(d) if isinstance(node, sp.Ne) else d

    encoded = sp.sympify(cond).replace(lambda x: isinstance(x, sp.core.relational.Relational), atom)
    return sp.satisfiable(encoded) is not False


def given(cond: sp.Basic, assumed: sp.Basic) -> sp.Basic:
    """``cond`` where ``assumed`` holds (a case's condition): each of its atoms (a flag, an option given, a
    relation) that ``assumed`` decides, replaced by true or false. In the case ``amsgrad``, a state stored
    where ``amsgrad`` is stored always: its kernel tests no flag that the case has already decided."""
    cond = sp.sympify(cond)
    if cond in (sp.true, sp.false) or assumed is sp.true:
        return cond
    decided = {}
    for a in _boolean_atoms(cond):
        if not may_hold(sp.And(assumed, sp.Not(a))):
            decided[a] = sp.true
        elif not may_hold(sp.And(assumed, a)):
            decided[a] = sp.false
    return cond.xreplace(decided) if decided else cond


def _boolean_atoms(cond: sp.Basic) -> set:
    """The atoms of a boolean function: flags, ``Given(option)``, relations."""
    if isinstance(cond, sp.logic.boolalg.BooleanFunction):
        return set().union(*(_boolean_atoms(a) for a in cond.args))
    return set() if cond in (sp.true, sp.false) else {cond}


def reads_array(expr: sp.Basic, arrays: Iterable[str]) -> bool:
    names = set(arrays)
    return any(base(s) in names for s in expr.free_symbols)


def split(cond: sp.Basic, arrays: Iterable[str]) -> tuple[sp.Basic, sp.Basic]:
    """(static, dynamic) parts of a conjunction (``sp.true`` where there is none)."""
    names = set(arrays)
    parts = cond.args if isinstance(cond, sp.And) else (cond,)
    static = [c for c in parts if not reads_array(c, names)]
    dynamic = [c for c in parts if reads_array(c, names)]
    return sp.And(*static), sp.And(*dynamic)


def guard(a: Assign, arrays: Iterable[str]) -> tuple[sp.Basic, Assign] | None:
    """``x <- where(c, e, x)`` ("keep the previous value otherwise") with a static part in ``c``: (that part,
    the assignment to run under it: ``x <- e``, or ``x <- where(dynamic, e, x)``); None for any other."""
    e = a.expr
    if a.role in (Role.TEMP, Role.REDUCE) or not (isinstance(e, sp.Piecewise) and len(e.args) == 2):
        return None
    (value, cond), (other, _) = e.args
    if not (isinstance(other, sp.Symbol) and base(other) == a.target and other != a.lhs):
        return None
    static, dynamic = split(cond, arrays)
    if static is sp.true:
        return None
    inner = value if dynamic is sp.true else sp.Piecewise((value, dynamic), (other, True))
    return static, dataclasses.replace(a, expr=inner)


def pass_condition(section: Section, arrays: Iterable[str]) -> sp.Basic:
    """The static condition under which a pass over all tensors is needed at all (``sp.true``: always):
    where every reduction it computes is computed under a static condition, their disjunction."""
    parts = []
    for a in section.body:
        if a.role != Role.REDUCE:
            continue
        if not isinstance(a.expr, sp.Piecewise):
            return sp.true
        static, _ = split(a.expr.args[0][1], arrays)
        if static is sp.true:
            return sp.true
        parts.append(static)
    return sp.simplify_logic(sp.Or(*parts)) if parts else sp.true


def lift(expr: sp.Basic, selects: Iterable[str], elements: Iterable[str]) -> sp.Basic:
    """``expr`` with each choice that Python tests (a condition reading no select name: the rank, a flag)
    and that chooses between per-element values lifted to the top: ``lr*where(matrix, a, b)`` becomes
    ``where(matrix, lr*a, lr*b)``, so an in-place backend writes one ``if`` block per branch into its
    buffers instead of an expression that allocates. The values are the same: the operations of the
    branch taken, in the same order."""
    names, element_names = set(selects), set(elements)

    def liftable(node: sp.Basic) -> bool:
        return (
            isinstance(node, sp.Piecewise)
            and not any(reads_array(c, names) for _, c in node.args)
            and any(reads_array(v, element_names) for v, _ in node.args)
        )

    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(lift(v, names, element_names), c) for v, c in expr.args], evaluate=False)
    inner = next((n for n in sp.preorder_traversal(expr) if liftable(n)), None)
    if inner is None:
        return expr
    return sp.Piecewise(
        *[(lift(expr.xreplace({inner: v}), names, element_names), c) for v, c in inner.args], evaluate=False
    )
