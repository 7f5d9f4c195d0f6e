"""Guards: a once-per-step value that only a branch reads is computed only when that branch is taken.

A rule computes a value with ``let`` where the paper names it, and reads it in one branch of a ``where``
whose test is once per step (RAdam's rectification, a root of a number that is negative until the
variance estimate is long enough: ``where(rho > 5, ... * rect, ...)``). The backends that compute
once-per-step values in Python (NumPy, torch, the prologues of the fused and Triton kernels) would compute
it at every step, and ``math.sqrt`` of a negative number raises. This pass finds, for each once-per-step
``let`` (and compiler temporary) of a case, the conditions under which its value is read: the tests of
the ``where`` branches around each read, through the values that read it in turn. Where every read is
under such a condition, and that condition reads only values computed before it (hyperparameters, the
step, earlier once-per-step values), the value becomes ``where(condition, value, 0)``: a Python
conditional in those backends, a select in JAX's. A value read anywhere without a condition, or under a
condition on per-tensor or per-element values, is left as it is.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Given
from ..ir import Assign, Case, Program, Role, Scope, SectionKind, ssa

#: the roles of the values this pass guards: what the rule names and what the compiler names for it
_GUARDED = (Role.LET, Role.TEMP)


def guard_lets(program: Program) -> Program:
    cases = tuple(_guard_case(c, program) for c in program.cases)
    return program.replace(cases=cases, passes=program.passes + ("guard_lets",))


def _guard_case(case: Case, program: Program) -> Case:
    order = [(a, s.kind) for s in case.sections for a in s.body]
    step = {
        ssa(a.target, a.version): i
        for i, (a, kind) in enumerate(order)
        if a.scope <= Scope.GLOBAL and kind == SectionKind.STEP
    }
    # names every step reads before its first statement: hyperparameters, whether an option is given, the
    # step's counters
    known = {sp.Symbol(h.name) for h in program.hypers} | {Given(h.name) for h in program.hypers}
    known |= {sp.Symbol("t"), sp.Symbol("n")}
    wanted = {ssa(a.target, a.version) for a, _ in order if a.role in _GUARDED} & step.keys()
    guards: dict[sp.Symbol, sp.Basic] = {}  # the condition under which each value is read
    for a, _ in reversed(order):  # a value's readers come after it: their own guards are known by then
        target = ssa(a.target, a.version)
        outer = guards.get(target, sp.true) if target in wanted else sp.true
        for symbol, condition in reads_under(a.expr, sp.true):
            if symbol in wanted:
                position = step[symbol]

                def computed(s: sp.Symbol, position: int = position) -> bool:
                    return s in known or step.get(s, position) < position

                # a test the value's own step cannot evaluate (a per-element one) is dropped: a weaker guard
                read = weaken(sp.And(outer, condition), computed)
                guards[symbol] = sp.Or(guards.get(symbol, sp.false), read)
    if not guards:
        return case
    changed = {}
    for symbol, condition in guards.items():
        condition = sp.simplify_logic(condition) if condition.free_symbols else condition
        if condition is sp.true or condition is sp.false:
            continue
        changed[symbol] = condition
    return guarded(case, changed, sp.Integer(0))


def guarded(case: Case, conditions: dict[sp.Symbol, sp.Basic], otherwise: sp.Basic) -> Case:
    """``case`` with each value of ``conditions`` (by its versioned symbol) computed only where its condition
    holds: ``where(condition, value, otherwise)``, in the case's body and its sections alike."""
    if not conditions:
        return case

    def rewrite(a: Assign) -> Assign:
        condition = conditions.get(ssa(a.target, a.version))
        if condition is None:
            return a
        return dataclasses.replace(a, expr=sp.Piecewise((a.expr, condition), (otherwise, True)))

    sections = tuple(dataclasses.replace(s, body=tuple(map(rewrite, s.body))) for s in case.sections)
    return dataclasses.replace(case, body=tuple(map(rewrite, case.body)), sections=sections)


def weaken(condition: sp.Basic, computed) -> sp.Basic:
    """``condition`` with each term of its conjunctions that reads a value ``computed`` rejects replaced by
    true: a condition implied by it that the value's own step can test."""
    if isinstance(condition, sp.And):
        return sp.And(*(weaken(c, computed) for c in condition.args))
    return condition if all(computed(s) for s in condition.free_symbols) else sp.true


def reads_under(expr: sp.Basic, condition: sp.Basic):
    """Each symbol ``expr`` reads, with the condition of the branches around that read: a ``where``'s value
    is read under its test (and the earlier tests' failing); its tests are read under what holds so far."""
    if isinstance(expr, sp.Symbol):
        yield expr, condition
        return
    if isinstance(expr, sp.Piecewise):
        earlier = sp.true
        for value, test in expr.args:
            yield from reads_under(test, sp.And(condition, earlier))
            yield from reads_under(value, sp.And(condition, earlier, test))
            earlier = sp.And(earlier, sp.Not(test))
        return
    for arg in expr.args:
        yield from reads_under(arg, condition)
