"""Storage safety of the in-place form: a named value never changes when a buffer is updated in place.

In the in-place form (NumPy, torch) ``w``, the gradient and the state are buffers written in place, and
a value that is just another name for one of them (``old = m``, or ``old = where(c, m, 0)``, printed as
a Python binding) is not a value but an alias: when ``m`` is updated in place, ``old`` follows it. In SSA
``old.1 = m`` is the *previous* ``m``, so printing it as an alias changes the program's meaning as soon
as ``m.1`` is written while ``old.1`` is still read.

This pass finds every such value (through chains of names and through every branch of a ``where``) that
is read after the buffer it may alias was written again, and makes it a copy: the branch ``m`` becomes
``Copy(m)``, which the in-place backends print as a copy into the value's own scratch buffer and every
other backend prints as ``m``. Values whose buffer is not written again while they are read stay aliases
(no copy, no cost). The increment form (JAX) is functional and needs nothing.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..ir import Assign, Copy, Program, Role, Scope, base

#: roles of the statements that bind a name to a value (not a buffer written in place)
_BINDINGS = (Role.LET, Role.TEMP)


def protect_aliases(program: Program) -> Program:
    buffers = {"w", "g"} | {s.name for s in program.states if s.scope >= Scope.TENSOR}
    cases = tuple(dataclasses.replace(c, body=copies_needed(c.body, buffers)) for c in program.cases)
    return program.replace(cases=cases, passes=program.passes + ("protect_aliases",))


def may_alias(expr: sp.Basic, aliases: dict[sp.Symbol, frozenset[sp.Symbol]], buffers: set[str]):
    """The versions of buffers that the value of ``expr`` may be another name for."""
    if isinstance(expr, sp.Symbol):
        if base(expr) in buffers:
            return frozenset({expr})
        return aliases.get(expr, frozenset())
    if isinstance(expr, sp.Piecewise):
        return frozenset().union(*(may_alias(value, aliases, buffers) for value, _ in expr.args))
    return frozenset()  # an operation: a new value


def copies_needed(body: tuple[Assign, ...], buffers: set[str]) -> tuple[Assign, ...]:
    """The body with ``Copy`` around each aliased buffer whose storage is written while the alias lives."""
    aliases: dict[sp.Symbol, frozenset[sp.Symbol]] = {}
    out = list(body)
    for i, a in enumerate(body):
        if a.role not in _BINDINGS:
            continue
        held = may_alias(a.expr, aliases, buffers)
        if not held:
            continue
        unsafe = {s for s in held if _written_while_read(body, i, s, a.lhs)}
        if unsafe:
            out[i] = dataclasses.replace(a, expr=_copy_branches(a.expr, unsafe, aliases, buffers))
            held = held - unsafe
        aliases[a.lhs] = held
    return tuple(out)


def _written_while_read(body: tuple[Assign, ...], i: int, buffer: sp.Symbol, alias: sp.Symbol) -> bool:
    """Whether ``buffer``'s storage gets a new version after statement ``i`` and ``alias`` is read after it
    (directly; a later alias of the alias is checked when its own statement is reached)."""
    name = base(buffer)
    for j in range(i + 1, len(body)):
        if body[j].target == name and body[j].role not in _BINDINGS:
            # read by the statement that writes the buffer, the alias is the buffer's current value,
            # element by element: only the statements after it see the new one
            return any(alias in b.expr.free_symbols for b in body[j + 1 :])
    return False


def _copy_branches(expr: sp.Basic, unsafe: set[sp.Symbol], aliases, buffers) -> sp.Basic:
    """Each branch of ``expr`` that may alias an unsafe buffer (directly or through names), copied."""
    if isinstance(expr, sp.Symbol):
        return Copy(expr) if may_alias(expr, aliases, buffers) & unsafe else expr
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*((_copy_branches(v, unsafe, aliases, buffers), c) for v, c in expr.args))
    return expr
