"""State analysis: what persists, under which conditions it exists, what is dead.

* A state that never influences the parameter (directly or through other
  state, in any case) is dead: an error, since it would cost memory for nothing.
* A value assigned and then assigned again before anything reads it is lost:
  an error for state and the parameter (the rule almost certainly meant
  something else), silently dropped for intermediate values.
* Intermediate values nobody reads are removed (dead-code elimination).
* A state exists only under the static conditions of the cases that use it
  (Keras SGD keeps no velocity when ``momentum == 0``).
* A state whose previous value no equation reads does not persist: it becomes
  a temporary and costs no memory (the TF1-graph NovoGrad's ``v_t = ||g_t||^2``).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..errors import RuleError
from ..ir import SPECIALISED, Assign, Program, Role, base, ssa
from .conditions import may_hold


def analyse_state(program: Program) -> Program:
    _check_live(program)
    finalized = finalizer_reads(program)  # what the finalisers read is kept until the end of training
    transient = {
        s.name for s in program.states if s.name not in finalized and not _reads_previous(program, s.name)
    }
    cases = tuple(
        dataclasses.replace(c, body=_eliminate_dead(program, _demote(c.body, transient), transient))
        for c in program.cases
    )
    states = []
    for s in program.states:
        if s.name in transient:
            states.append(dataclasses.replace(s, allocated_when=sp.false, persists=False))
            continue
        users = [c.condition for c in cases if any(_touches(a, s.name) for a in c.body)]
        when = sp.simplify_logic(sp.And(s.allocated_when, sp.Or(*users))) if users else sp.false
        _check_exists_if(program, s)
        states.append(dataclasses.replace(s, allocated_when=when))
    return program.replace(cases=cases, states=tuple(states), passes=program.passes + ("analyse_state",))


def _check_exists_if(program: Program, s) -> None:
    """Every read and write of a state declared ``exists_if=c`` happens under a guard that implies c."""
    cond = s.allocated_when  # the declared condition (lower copies exists_if here)
    if cond is sp.true:
        return
    for case in program.cases:
        if not may_hold(sp.And(case.condition, sp.Not(cond))):
            continue  # the case implies it: every use in it is guarded
        for a in case.body:
            for path in dict.fromkeys(paths_to(a, s.name)):
                if may_hold(sp.And(case.condition, path, sp.Not(cond))):
                    raise RuleError(
                        program.rule,
                        f"state '{s.name}' exists only if {cond}, but it is used where that may not hold"
                        f" (under {sp.And(case.condition, path)})",
                        **(program.written(a.equation) if a.equation else {}),
                        hint=f"guard the equation with only_if={cond} (or where({cond}, ..., ...))",
                    )


def paths_to(a: Assign, name: str) -> list:
    """Path conditions under which the assignment reads or writes ``name``.

    ``x <- where(c, e, x)`` writes x only under c; its otherwise-branch (the old x, kept) is no use, also
    inside the guards that wrap it (Keras's options: ``where(is_update, where(c, e, x), x)``).
    """
    return _written(a.expr, name, sp.true) if a.target == name else reads(a.expr, name, sp.true)


def _written(expr: sp.Basic, name: str, path) -> list:
    if isinstance(expr, sp.Symbol) and base(expr) == name:
        return []  # kept as it was
    if not isinstance(expr, sp.Piecewise):
        return [path] + reads(expr, name, path)  # a value computed here: written, and what it reads read
    out, previous = [], sp.true
    for value, cond in expr.args:
        out += reads(cond, name, sp.And(path, previous))
        out += _written(value, name, sp.And(path, previous, cond))
        previous = sp.And(previous, sp.Not(cond))
    return out


def reads(expr, name: str, path) -> list:
    """The conditions (``path`` and the branches' tests) under which ``expr`` reads ``name``."""
    if isinstance(expr, sp.Symbol):
        return [path] if base(expr) == name else []
    if isinstance(expr, sp.Piecewise):
        out, previous = [], sp.true
        for value, cond in expr.args:
            here = sp.And(path, previous, cond)
            out += reads(value, name, here)
            previous = sp.And(previous, sp.Not(cond))
        return out
    out = []
    for arg in expr.args:
        out += reads(arg, name, path)
    return out


def _reads_previous(program: Program, name: str) -> bool:
    """Whether any case reads the value the state had at the start of the step."""
    symbol = sp.Symbol(name)
    return any(symbol in a.expr.free_symbols for c in program.cases for a in c.body)


def _demote(body: tuple[Assign, ...], transient: set[str]) -> tuple[Assign, ...]:
    """A state whose previous value is never read is recomputed every step: a temporary, not stored."""
    return tuple(
        dataclasses.replace(a, role=Role.LET) if a.target in transient and a.role == Role.STATE else a
        for a in body
    )


def _touches(a: Assign, name: str) -> bool:
    return a.target == name or any(base(s) == name for s in a.expr.free_symbols)


def finalizer_reads(program: Program) -> set[str]:
    return {base(x) for e, _ in program.finalize for x in sp.sympify(e).free_symbols}


def _check_live(program: Program) -> None:
    if SPECIALISED in program.transforms:  # for the kernels: it stores what the plain path stores
        return
    deps: dict[str, set[str]] = {}
    for c in program.cases:
        for a in c.body:
            deps.setdefault(a.target, set()).update(base(s) for s in a.expr.free_symbols)
    live = {"w"} | finalizer_reads(program)  # a state only a finaliser reads (an EMA to copy in) is used
    todo = list(live)
    while todo:
        for d in deps.get(todo.pop(), ()):
            if d not in live:
                live.add(d)
                todo.append(d)
    for s in program.states:
        if s.name not in live:
            eq = next(i for i, e in enumerate(program.equations, 1) if e.target == s.name)
            raise RuleError(
                program.rule,
                f"state '{s.name}' is updated but never influences the parameter update (it is dead)",
                **program.written(eq),
                hint=f"use '{s.name}' in the update of w (or of a state that w reads), or remove it",
            )


def _eliminate_dead(
    program: Program, body: tuple[Assign, ...], transient: set[str] = frozenset()
) -> tuple[Assign, ...]:
    # reads that count: later assignments, and the final version of state and w (kept for the next step)
    final = {}
    for a in body:
        final[a.target] = a.version
    kept: list[Assign] = []
    needed: set[sp.Symbol] = set()
    for a in reversed(body):
        persists = a.role in (Role.STATE, Role.PARAM) and final[a.target] == a.version
        if a.lhs in needed or persists:
            kept.append(a)
            needed |= a.expr.free_symbols
        elif a.role in (Role.STATE, Role.PARAM) or a.target in transient:  # a state, stored or not
            later = next((b for b in body if b.target == a.target and b.version == a.version + 1), None)
            if later is None:  # a temporary's value that this case does not read: dropped
                continue
            raise RuleError(
                program.rule,
                f"'{a.target}' is assigned here and again by equation {program.own(later.equation)[0]} before"
                " anything reads this value, so it is lost",
                **program.written(a.equation),
                hint="merge the two equations, or read the first value in the second",
            )
        # an unread intermediate value (let, gradient) is dropped
    kept.reverse()
    return _renumber(kept)


def _renumber(body: list[Assign]) -> tuple[Assign, ...]:
    """Versions numbered 1, 2, ... again per name after some were dropped (a value overwritten before it was
    read, as ``mu_hat`` under Nesterov): the version before ``x.k`` is ``x.(k-1)`` for every later pass."""
    count: dict[str, int] = {}
    new: dict[sp.Symbol, sp.Symbol] = {}
    out = []
    for a in body:
        count[a.target] = count.get(a.target, 0) + 1
        expr = a.expr.xreplace(new) if new else a.expr
        if count[a.target] != a.version:
            new[a.lhs] = ssa(a.target, count[a.target])
        out.append(dataclasses.replace(a, version=count[a.target], expr=expr))
    return tuple(out)
