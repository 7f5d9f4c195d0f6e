"""Common-subexpression elimination, per case and per form (in-place and increment).

SymPy's ``cse`` finds the repeated subexpressions; this pass places each
temporary as late as it may go (just before its first use, so the generated
code reads in the rule's order) but before anything it reads is overwritten
in place.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import AxisReduction, Transposed
from ..ir import Assign, Program, Role, base
from .scope import scope_of, scopes_of


def eliminate_common_subexpressions(program: Program) -> Program:
    """Each case's temporaries are numbered on from the previous case's (``tmp0``... in the first, then
    ``tmp3``...): a name holds one value in the whole program, so what the passes and printers key by name
    (its scope, whether it is an array) is the same in every case. Numbered per case, ``tmp1`` was
    ``1 - b2`` (a constant) in one case and ``b2**t`` (one per step) in another."""
    scopes = scopes_of(program)
    cases, start = [], 0
    for c in program.cases:
        body, start = _cse(c.body, scopes, start)
        cases.append(dataclasses.replace(c, body=body))
    return program.replace(cases=tuple(cases), passes=program.passes + ("eliminate_common_subexpressions",))


def _cse(body: tuple[Assign, ...], scopes: dict, start: int) -> tuple[tuple[Assign, ...], int]:
    """The case's body with its temporaries, numbered from ``start``; and the next free number."""
    if not body:
        return body, start
    names = sp.numbered_symbols("tmp", start=start)
    # a branch of where(c, a, b) is evaluated only when chosen (Python's conditional expression, or an
    # `if` around the statement): nothing is hoisted out of it, so each Piecewise is opaque to CSE
    hidden: dict[sp.Symbol, sp.Basic] = {}

    def hide(e):
        d = sp.Dummy(f"pw{len(hidden)}")
        hidden[d] = e
        return d

    exprs = [a.expr.replace(lambda e: isinstance(e, sp.Piecewise), hide) for a in body]
    replacements, reduced = sp.cse(exprs, symbols=names, order="none")
    replacements, reduced = _divisors(replacements, reduced)
    replacements, reduced = _name_axis_arguments(replacements, reduced, names)

    def restore(e):
        while e.free_symbols & hidden.keys():  # nested where's were hidden inside outer ones
            e = e.xreplace(hidden)
        return e

    replacements = [(sym, restore(expr)) for sym, expr in replacements]
    reduced = [restore(e) for e in reduced]
    # a condition (t == 1) reads better where it is used than as a named boolean; a transpose of a name is a
    # view, read where it is used (a name bound to it would follow the buffer it views)
    inline = {
        sym: expr
        for sym, expr in replacements
        if isinstance(expr, sp.logic.boolalg.Boolean)
        or (isinstance(expr, Transposed) and expr.args[0].is_Symbol)
    }
    if inline:
        replacements = [(sym, expr.xreplace(inline)) for sym, expr in replacements if sym not in inline]
        reduced = [e.xreplace(inline) for e in reduced]
        renumber = {sym: sp.Symbol(f"tmp{start + i}") for i, (sym, _) in enumerate(replacements)}
        replacements = [(renumber[sym], expr.xreplace(renumber)) for sym, expr in replacements]
        reduced = [e.xreplace(renumber) for e in reduced]
    if not replacements:
        return tuple(dataclasses.replace(a, expr=e) for a, e in zip(body, reduced)), start
    stmts = [dataclasses.replace(a, expr=e) for a, e in zip(body, reduced)]
    temps = {sym: expr for sym, expr in replacements}
    scopes = dict(scopes)
    for sym, expr in replacements:
        scopes[sym.name] = scope_of(expr, scopes)

    # position p: the temp is emitted just before statement p
    position: dict[sp.Symbol, int] = {}
    for sym, expr in reversed(replacements):
        uses = [i for i, a in enumerate(stmts) if sym in a.expr.free_symbols]
        uses += [position[o] for o, oe in temps.items() if o in position and sym in oe.free_symbols]
        p = min(uses)
        inputs = {base(s) for s in expr.free_symbols if s not in temps}
        defined_at = max([i + 1 for i, a in enumerate(stmts) if a.lhs in expr.free_symbols] or [0])
        overwritten = [i for i, a in enumerate(stmts) if i >= defined_at and a.target in inputs]
        if overwritten and min(overwritten) < p:
            p = min(overwritten)
        position[sym] = p

    out: list[Assign] = []
    order = list(temps)
    for i, a in enumerate(stmts + [None]):
        for sym in sorted((s for s in order if position[s] == i), key=order.index):
            out.append(Assign(sym.name, 0, temps[sym], Role.TEMP, scopes[sym.name]))
        if a is not None:
            out.append(a)
    return tuple(out), start + len(replacements)


def _name_axis_arguments(replacements: list, reduced: list, names) -> tuple[list, list]:
    """Each reduction over one axis of an expression (``mean(g**2, axis=-1)``) reads a temporary of its own
    instead: NumPy and torch compute it into a scratch buffer, where the expression would be a new array
    every step. Not inside a ``where`` (hidden here: computed only when its branch is taken)."""
    named: dict[sp.Basic, sp.Symbol] = {}

    def name(e: sp.Basic) -> sp.Basic:
        def one(node):
            arg = node.args[0]
            if arg.is_Symbol or arg.is_Number:
                return node
            if arg not in named:
                named[arg] = next(names)
            return node.func(named[arg], *node.args[1:])

        return e.replace(lambda x: isinstance(x, AxisReduction), one)

    out = []
    for sym, expr in replacements:
        before = set(named)
        expr = name(expr)
        out += [(named[a], a) for a in named if a not in before]  # just before the temporary that reads it
        out.append((sym, expr))
    reduced = [name(e) for e in reduced]
    done = {s for s, _ in out}
    out += [(s, a) for a, s in named.items() if s not in done]
    return out, reduced


def _divisors(replacements: list, reduced: list) -> tuple[list, list]:
    """A shared reciprocal (``1/(1 - decay**t)``, read by ``nu/(1 - decay**t)`` and ``mu/(1 - decay**t)``)
    named as its divisor: the values are still divided by it (``nu / tmp1``), as the rule wrote them, not
    multiplied by a rounded reciprocal (one rounding more, another result in the last bit)."""
    swap = {sym: sym**-1 for sym, expr in replacements if expr.is_Pow and expr.exp == -1}
    if not swap:
        return replacements, reduced
    out = [(sym, expr.base if sym in swap else expr.xreplace(swap)) for sym, expr in replacements]
    return out, [e.xreplace(swap) for e in reduced]
