"""Scope inference: how many values each quantity has (see ir.Scope).

Hyperparameters are constant; the step and the learning rate are global; ``g``
and ``w`` are per element. A state's scope is the widest scope of the values
assigned to it (a fixpoint, since a state may read itself); a state whose
declared scope is narrower than that is an error naming the equation.
Reductions (``dsl.Reduction``: a per-element value to one per tensor or one
per step) narrow the scope of their argument.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import AxisReduction, Over, Reduction
from ..errors import RuleError
from ..ir import Assign, Program, Role, Scope, base


def reduction_scope(node: Reduction) -> Scope:
    """The scope of a reduction's result: one value per tensor, or one per step."""
    return Scope.TENSOR if node.over == Over.TENSOR else Scope.GLOBAL


def scope_of(expr: sp.Basic, scopes: dict[str, Scope]) -> Scope:
    """The scope of an expression given the scope of every name it reads."""
    if isinstance(expr, sp.Symbol):
        return scopes[base(expr)]
    if isinstance(expr, Reduction):
        return reduction_scope(expr)
    if isinstance(expr, AxisReduction):  # one value per row (or column): still an array per tensor
        return Scope.ELEMENT
    found = Scope.CONST
    for arg in expr.args:
        found = max(found, scope_of(arg, scopes))
    return found


def infer_scopes(program: Program) -> Program:
    scopes = _inputs(program)
    declared = {s.name: s.declared for s in program.states}
    for s in program.states:  # an initial value that reads w (a copy of the weights) is per element
        initial = scope_of(s.init, scopes)
        if declared[s.name] is not None and initial > declared[s.name]:
            raise RuleError(
                program.rule,
                f"state '{s.name}' is declared {declared[s.name].word} but its initial value `{s.init}` is"
                f" {initial.word}",
                hint="initialise it from hyperparameters, or declare it with scope='element' (or leave scope out)",
            )
        scopes[s.name] = declared[s.name] or initial
    lets = {a.target for c in program.cases for a in c.body if a.role == Role.LET and a.target != "t"}
    for name in lets:
        scopes[name] = Scope.CONST

    changed = True
    while changed:
        changed = False
        for case in program.cases:
            for a in case.body:
                if a.role in (Role.PARAM, Role.GRAD) or a.target == "t":
                    continue
                s = scope_of(a.expr, scopes)
                if s > scopes[a.target]:
                    if a.role == Role.STATE and declared[a.target] is not None:
                        raise RuleError(
                            program.rule,
                            f"state '{a.target}' is declared {declared[a.target].word} but is assigned a value {s.word}",
                            **program.written(a.equation),
                            hint=f"reduce the value to one {declared[a.target].word} (e.g. with "
                            + (
                                "global_sum or global_max"
                                if declared[a.target] == Scope.GLOBAL
                                else "tensor_sum"
                            )
                            + ") or declare the state with a wider scope",
                        )
                    scopes[a.target] = s
                    changed = True

    for case in program.cases:
        for a in case.body:
            _check_reductions(program, a, scopes)
    for s in program.states:  # a state updated from constants only is still one value per step
        scopes[s.name] = max(scopes[s.name], Scope.GLOBAL)
    states = tuple(dataclasses.replace(s, scope=scopes[s.name]) for s in program.states)
    cases = tuple(
        dataclasses.replace(c, body=tuple(_with_scope(a, scopes) for a in c.body)) for c in program.cases
    )
    return program.replace(states=states, cases=cases, passes=program.passes + ("infer_scopes",))


def _check_reductions(program: Program, a: Assign, scopes: dict[str, Scope]) -> None:
    for node in sp.preorder_traversal(a.expr):
        if not isinstance(node, (Reduction, AxisReduction)):
            continue
        arg = node.args[0]
        problem = None
        if any(isinstance(n, Reduction) for n in sp.preorder_traversal(arg)):
            problem = "a reduction of a reduction"
        elif isinstance(node, Reduction) and node.from_shape:
            continue  # size, rank: read from the tensor
        elif scope_of(arg, scopes) < Scope.ELEMENT:
            problem = f"a reduction of a value that is {scope_of(arg, scopes).word}, not per element"
        if problem:
            raise RuleError(
                program.rule,
                f"`{unversioned(node)}` is {problem}",
                **program.written(a.equation),
                hint="reduce an element-wise expression of g, w or per-element state, once",
            )


def unversioned(expr: sp.Basic) -> sp.Basic:
    """``expr`` with the names the rule's author wrote (``g``, not the compiler's version ``g.3``)."""
    return expr.xreplace({s: sp.Symbol(base(s)) for s in expr.free_symbols if isinstance(s, sp.Symbol)})


def _with_scope(a: Assign, scopes: dict[str, Scope]) -> Assign:
    if a.role in (Role.PARAM, Role.GRAD):
        return dataclasses.replace(a, scope=Scope.ELEMENT)
    return dataclasses.replace(a, scope=scopes[a.target])


def _inputs(program: Program) -> dict[str, Scope]:
    """Scopes of what a step starts with: hyperparameters (and whether options are given), n, t, the loss, g, w."""
    scopes: dict[str, Scope] = {h.name: Scope.CONST for h in program.hypers}
    scopes.update({f"{h.name}?": Scope.CONST for h in program.hypers})
    scopes.update({"learning_rate": Scope.GLOBAL, "t": Scope.GLOBAL, "n": Scope.GLOBAL, "loss": Scope.GLOBAL})
    scopes.update({"g": Scope.ELEMENT, "w": Scope.ELEMENT})
    return scopes


def scopes_of(program: Program) -> dict[str, Scope]:
    """The scope of every name of a program that has been through infer_scopes."""
    scopes = _inputs(program)
    scopes.update({"update": Scope.ELEMENT})
    for s in program.states:
        scopes[s.name] = s.scope
    for c in program.cases:
        for a in c.body:
            scopes[a.target] = a.scope
    return scopes
