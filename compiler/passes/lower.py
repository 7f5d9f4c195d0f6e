"""Lowering: a DSL rule -> a Program of straight-line cases in SSA form.

Checks what can be checked on the rule as written (every symbol defined before
use, targets that may be assigned, flags used only as conditions, static
conditions that read only hyperparameters), then splits the rule into one case
per combination of the ``when=`` conditions of its equations and renames every
assignment to a new version of its target. A ``where(flag, a, b)`` inside an
expression is not split: it prints as a conditional expression.
"""

from __future__ import annotations

import itertools

import sympy as sp
from sympy.logic.boolalg import Boolean

from ..dsl import RESERVED, AxisReduction, Equation, Given, Reduction, Rule, own_equation, w
from ..errors import RuleError
from ..ir import Assign, Case, Program, Role, Scope, StateVar, ssa
from .conditions import may_hold

MAX_STATIC_ATOMS = 8


def lower(rule: Rule) -> Program:
    _check_declarations(rule)
    for i, eq in enumerate(rule.equations, 1):
        _check_equation(rule, i, eq)
        _check_options_guarded(rule, eq, _where(rule, i))
    for eq in rule.finalize:
        _check_finalizer(rule, eq)
    _check_every_state_assigned(rule)

    atoms, encode = _static_atoms(rule)
    cases: dict[tuple, list] = {}
    for values in itertools.product((True, False), repeat=len(atoms)):
        truth = dict(zip(atoms, values))
        body = _specialise(rule, encode, truth)
        key = tuple((a.target, a.version, sp.srepr(a.expr)) for a in body)
        minterm = sp.And(*[a if v else sp.Not(a) for a, v in truth.items()])
        cases.setdefault(key, [body, []])[1].append(minterm)

    decode = {d: c for c, d in encode.items()}
    program_cases = []
    earlier = sp.false
    for body, minterms in cases.values():
        cond = sp.Or(*minterms)
        exact = sp.simplify_logic(cond, form="dnf") if atoms else sp.true
        test = sp.simplify_logic(cond, form="dnf", dontcare=earlier) if atoms else sp.true
        earlier = sp.Or(earlier, cond)
        program_cases.append(
            Case(condition=exact.xreplace(decode), test=test.xreplace(decode), body=tuple(body))
        )
    for case in program_cases:
        if not any(a.target == "w" for a in case.body):
            raise RuleError(
                rule.name,
                "the parameter w is never updated"
                + ("" if case.condition is sp.true else f" when {case.condition}"),
                hint="add an equation `rule.assign(w, ...)`",
            )

    declared = {"element": Scope.ELEMENT, "tensor": Scope.TENSOR, "global": Scope.GLOBAL, None: None}
    states = tuple(
        StateVar(
            s.name, s.init, Scope.ELEMENT, s.meaning, s.latex, s.exists_if, declared[s.scope], dtype=s.dtype
        )
        for s in rule.states.values()
    )
    return Program(
        rule=rule.name,
        module=rule.module,
        title=rule.title,
        summary=rule.summary,
        references=rule.references,
        file=rule.file,
        base=rule.base,
        hypers=tuple(rule.hypers.values()),
        states=states,
        equations=tuple(rule.equations),
        cases=tuple(program_cases),
        configs=dict(rule.configs),
        passes=("lower",),
        exclusives=tuple(rule.exclusives),
        finalize=tuple((e.expr, e.label) for e in rule.finalize),
        transforms=tuple(rule.transforms),
        core=tuple(rule.core or ()),
    )


# --------------------------------------------------------------------------------------
# checks on the rule as written


def _where(rule: Rule, i: int) -> dict:
    """Where an error is: the equation as its author wrote it (not as a transform wrapped it)."""
    i, eq = own_equation(rule.equations, rule.core, i)
    return {"equation": f"{i} `{eq.text()}`", "origin": eq.origin}


def _check_declarations(rule: Rule) -> None:
    if "learning_rate" not in rule.hypers:
        raise RuleError(
            rule.name, "the rule declares no learning rate", hint="add `lr = rule.learning_rate(default)`"
        )
    if not rule.equations:
        raise RuleError(rule.name, "the rule has no equations", hint="add `rule.assign(w, ...)`")
    hypers = {sp.Symbol(n) for n, h in rule.hypers.items() if h.kind == "float"}
    for s in rule.states.values():
        bad = s.init.free_symbols - hypers - {sp.Symbol("w")}
        if bad:
            raise RuleError(
                rule.name,
                f"the initial value of state '{s.name}' is `{s.init}`, which reads {sorted(map(str, bad))};"
                " an initial value may read only real hyperparameters and w (the parameter before the first"
                " update), not the learning rate, flags, options, g, t or state",
                hint="initialise from constants or w, or write a first-step equation with where(Eq(t, 1), ..., ...)",
            )
        reductions = sorted(
            {str(x) for x in sp.preorder_traversal(s.init) if isinstance(x, (Reduction, AxisReduction))}
        )
        if reductions:
            raise RuleError(
                rule.name,
                f"the initial value of state '{s.name}' is `{s.init}`, which reads the reduction"
                f" {', '.join(reductions)}; an initial value is element-wise in w and the hyperparameters"
                " (each backend's init() builds it from the parameter alone)",
                hint=f"write the first step's value in an equation: {s.name} <- where(Eq(t, 1), <value>, {s.name})",
            )
        options = {n for n, h in rule.hypers.items() if h.optional}
        for name in sorted({x.name for x in s.init.free_symbols} & options):
            if may_hold(sp.And(s.exists_if, sp.Not(Given(name)))):
                raise RuleError(
                    rule.name,
                    f"the initial value of state '{s.name}' is `{s.init}`, which reads option '{name}' (None when"
                    f" not given), but the state may exist without it (exists_if={s.exists_if})",
                    hint=f"declare the state with exists_if=Given({name}), or initialise it from something else",
                )


def _check_equation(rule: Rule, i: int, eq: Equation) -> None:
    where = _where(rule, i)
    hypers = {n for n, h in rule.hypers.items() if h.kind != "bool"}
    flags = {n for n, h in rule.hypers.items() if h.kind == "bool"}
    given = {f"{n}?" for n, h in rule.hypers.items() if h.optional}
    lets = {e.target for e in rule.equations[: i - 1] if e.kind == "let"}
    known = RESERVED | hypers | flags | given | set(rule.states) | lets
    if eq.target == "t" and (eq.kind != "let" or i != 1):
        raise RuleError(
            rule.name,
            "the step t may only be redefined by the first equation",
            hint="use rule.define_step(expr), which puts the definition first",
            **where,
        )

    if eq.kind == "assign" and eq.target not in set(rule.states) | {"w", "g"} | lets:
        what = (
            "a hyperparameter"
            if eq.target in hypers | flags
            else "the step"
            if eq.target == "t"
            else "a value defined later"
            if eq.target in {e.target for e in rule.equations if e.kind == "let"}
            else "not declared"
        )
        raise RuleError(
            rule.name,
            f"'{eq.target}' cannot be assigned: it is {what}",
            hint="assign only declared state, the parameter w or the gradient g (declare state with rule.state)",
            **where,
        )
    for s in sorted(eq.expr.free_symbols | _free(eq.when), key=str):
        if s.name not in known:
            later = any(e.target == s.name for e in rule.equations[i - 1 :])
            raise RuleError(
                rule.name,
                f"symbol '{s.name}' is not defined"
                + (" yet (it is defined by a later equation)" if later else ""),
                hint="declare it with rule.hyper / rule.flag / rule.state, or define it with rule.let above this equation",
                **where,
            )
    if not isinstance(eq.expr, sp.Expr) and not (eq.kind == "let" and isinstance(eq.expr, Boolean)):
        raise RuleError(
            rule.name,
            f"the right-hand side is a condition, not a value: `{eq.expr}`",
            hint="use where(cond, a, b)",
            **where,
        )
    for node in sp.preorder_traversal(eq.expr):
        if isinstance(node, sp.Pow) and node.exp.is_negative and isinstance(node.base, sp.Symbol):
            h = rule.hypers.get(node.base.name)
            if (
                h is not None
                and h.interval is not None
                and 0 in h.interval
                and not (h.optional and h.zero_is_off)
            ):
                raise RuleError(
                    rule.name,
                    f"divides by '{h.name}', whose range {h.interval} includes 0",
                    hint=f"exclude 0 from the range of '{h.name}' (e.g. '(0, inf)') or divide by a sum that cannot be 0",
                    **where,
                )
    for s in _numeric_symbols(eq.expr):
        if s.name in flags:
            raise RuleError(
                rule.name,
                f"flag '{s.name}' is used as a number",
                hint=f"use it as a condition: where({s.name}, a, b) or when={s.name}",
                **where,
            )
    static = hypers | flags | given
    bad = {s.name for s in _free(eq.when)} - static
    if bad or sp.Symbol("learning_rate") in _free(eq.when):
        raise RuleError(
            rule.name,
            f"the condition `when={eq.when}` reads {sorted(bad | ({'learning_rate'} & {s.name for s in _free(eq.when)}))};"
            " a condition may read only flags and hyperparameters other than the learning rate",
            hint="for a condition on data or on the step use where(cond, a, b) inside the expression",
            **where,
        )


def _finalizer_where(eq: Equation) -> dict:
    return {"equation": f"finaliser '{eq.label}' `{eq.text()}`", "origin": eq.origin}


def _check_finalizer(rule: Rule, eq: Equation) -> None:
    """A finaliser runs after the last step: it reads w, the state, the hyperparameters and the step
    (``t`` and ``n`` as the last step saw them), nothing the step computes and drops."""
    where = _finalizer_where(eq)
    flags = {n for n, h in rule.hypers.items() if h.kind == "bool"}
    hypers = {n for n, h in rule.hypers.items() if h.kind not in ("bool", "learning_rate")}
    given = {f"{n}?" for n, h in rule.hypers.items() if h.optional}
    lets = {e.target for e in rule.equations if e.kind == "let"} - {"t"}
    for s in sorted(eq.expr.free_symbols, key=str):
        name = s.name
        if name in {"w", "t", "n"} | flags | hypers | given | set(rule.states):
            continue
        what = (
            "the gradient, which exists only during a step"
            if name == "g"
            else "the learning rate, which may be a schedule of the step"
            if name == "learning_rate"
            else "a value computed during a step and not kept"
            if name in lets
            else "not defined"
        )
        raise RuleError(
            rule.name,
            f"the finaliser reads '{name}': {what}; a finaliser may read only w, the state, the"
            " hyperparameters and the step t (or n) of the last update",
            hint="keep what it needs in a state (rule.state, assigned by the step), or compute it from those",
            **where,
        )
    for s in _numeric_symbols(eq.expr):
        if s.name in flags:
            raise RuleError(
                rule.name,
                f"flag '{s.name}' is used as a number",
                hint=f"use it as a condition: only_if={s.name} or where({s.name}, a, b)",
                **where,
            )
    _check_options_guarded(rule, eq, where)


def _check_options_guarded(rule: Rule, eq: Equation, where: dict) -> None:
    """An option (``rule.option``) is None when not given: every read of its value must be reachable only
    where ``Given(option)`` holds, by ``when=``, ``only_if=`` or an enclosing ``where(...)``."""
    options = {n for n, h in rule.hypers.items() if h.optional}
    if not options:
        return
    conditions: dict = {}  # a named condition (rule.let) stands for its definition
    for e in rule.equations:
        if e.kind == "let" and isinstance(e.expr, Boolean):
            conditions[sp.Symbol(e.target)] = e.expr.xreplace(conditions)
    for name, path in _option_reads(eq.expr, eq.when, options):
        if may_hold(sp.And(path, sp.Not(Given(name))).xreplace(conditions)):
            reached = "" if path is sp.true else f" (this read is reached when {path})"
            raise RuleError(
                rule.name,
                f"reads the value of option '{name}', which is None when it is not given, without a guard"
                f" that ensures Given({name}){reached}; it would fail at run time",
                hint=f"guard this read with Given({name}): only_if=Given({name}) or when=Given({name}) on the"
                f" equation, or where(Given({name}), <value reading {name}>, <value without it>)",
                **where,
            )
    for name in sorted({s.name for s in _free(eq.when)} & options):
        if may_hold(sp.And(eq.when, sp.Not(Given(name)))):
            raise RuleError(
                rule.name,
                f"the condition `when={eq.when}` reads the value of option '{name}', which is None when it is"
                f" not given, without requiring Given({name})",
                hint=f"write when=Given({name}) & (...)",
                **where,
            )


def _option_reads(expr, path, options: set[str]) -> list[tuple[str, object]]:
    """(option, path condition) for each read of an option's value (``Given(x)`` itself is not one).

    A branch of ``where`` is reached under its condition; the operands of ``and``/``or`` are evaluated
    left to right and stop early (the printers keep that order, and put ``Given`` tests first).
    """
    if isinstance(expr, Given):
        return []
    if isinstance(expr, sp.Symbol):
        return [(expr.name, path)] if expr.name in options else []
    if isinstance(expr, sp.Piecewise):
        out, previous = [], sp.true
        for value, cond in expr.args:
            out += _option_reads(cond, sp.And(path, previous), options)  # the test itself reads them
            out += _option_reads(value, sp.And(path, previous, cond), options)
            previous = sp.And(previous, sp.Not(cond))
        return out
    if isinstance(expr, (sp.And, sp.Or)):
        out, before = [], sp.true
        for arg in expr.args:
            out += _option_reads(arg, sp.And(path, before), options)
            before = sp.And(before, arg if isinstance(expr, sp.And) else sp.Not(arg))
        return out
    out = []
    for arg in expr.args:
        out += _option_reads(arg, path, options)
    return out


def _free(expr) -> set:
    return set(getattr(expr, "free_symbols", set()))


def _numeric_symbols(expr: sp.Basic) -> set[sp.Symbol]:
    """Symbols used as values (not inside a Piecewise condition or a relational)."""
    if isinstance(expr, sp.Symbol):
        return {expr}
    if isinstance(expr, sp.Piecewise):
        out: set[sp.Symbol] = set()
        for value, _cond in expr.args:
            out |= _numeric_symbols(value)
        return out
    if isinstance(expr, (Boolean, sp.core.relational.Relational)):
        return set()
    out = set()
    for arg in expr.args:
        out |= _numeric_symbols(arg)
    return out


def _check_every_state_assigned(rule: Rule) -> None:
    """A state must be assigned, unless it is a snapshot of the initial parameters (its initial value reads
    ``w`` and it is read: Prodigy's and D-Adaptation's ``x0``), which keeps that value."""
    assigned = {e.target for e in rule.equations if e.kind == "assign"}
    for name, state in rule.states.items():
        if name not in assigned:
            read = [i for i, e in enumerate(rule.equations, 1) if sp.Symbol(name) in e.expr.free_symbols]
            if read and w in sp.sympify(state.init).free_symbols:
                continue
            raise RuleError(
                rule.name,
                f"state '{name}' is never updated"
                + (" (read by the equation below)" if read else " and never read")
                + ", so it would keep its initial value forever",
                **(_where(rule, read[0]) if read else {}),
                hint="add an equation that assigns it, or make it a hyperparameter or a rule.let (a state"
                " that keeps the initial parameters is one whose initial value is w)",
            )


# --------------------------------------------------------------------------------------
# static conditions -> cases


def _static_atoms(rule: Rule) -> tuple[list[sp.Symbol], dict]:
    """Boolean atoms of every static condition, each relation replaced by a dummy symbol.

    ``Eq(momentum, 0)`` and ``Ne(momentum, 0)`` share one atom (``A`` and ``~A``).
    """
    static = {sp.Symbol(n) for n in rule.hypers if n != "learning_rate"}
    static |= {Given(n) for n, h in rule.hypers.items() if h.optional}
    conds = [eq.when for eq in rule.equations]  # where(flag, a, b) inside an expression stays there
    encode: dict = {}
    atoms: list = []
    for cond in conds:
        for node in sp.preorder_traversal(cond):
            if isinstance(node, sp.core.relational.Relational):
                key = sp.Eq(*node.args) if isinstance(node, sp.Ne) else node
                if key not in encode:
                    encode[key] = sp.Dummy(f"c{len(encode)}")
                    atoms.append(encode[key])
            elif (
                isinstance(node, sp.Symbol)
                and node in static
                and node not in atoms
                and not isinstance(node, sp.Dummy)
            ):
                atoms.append(node)
    if len(atoms) > MAX_STATIC_ATOMS:
        raise RuleError(
            rule.name,
            f"the rule has {len(atoms)} independent static conditions; at most {MAX_STATIC_ATOMS} are supported",
        )
    return atoms, encode


def _encode(cond, encode: dict):
    def repl(node):
        if isinstance(node, sp.Ne):
            return sp.Not(encode[sp.Eq(*node.args)])
        if isinstance(node, sp.core.relational.Relational) and node in encode:
            return encode[node]
        return node

    return (
        cond.replace(lambda n: isinstance(n, sp.core.relational.Relational), repl)
        if cond not in (sp.true, sp.false)
        else cond
    )


def _evaluate(cond, encode: dict, truth: dict) -> bool | None:
    value = _encode(sp.sympify(cond), encode).xreplace(
        {k: sp.true if v else sp.false for k, v in truth.items()}
    )
    if value is sp.true or value is True:
        return True
    if value is sp.false or value is False:
        return False
    return None  # depends on data


def _specialise(rule: Rule, encode: dict, truth: dict) -> list[Assign]:
    current: dict[str, int] = {}
    flags = {sp.Symbol(n) for n, h in rule.hypers.items() if h.kind == "bool"}
    known = {k: sp.true if v else sp.false for k, v in truth.items() if isinstance(k, Given) or k in flags}
    body: list[Assign] = []
    for i, eq in enumerate(rule.equations, 1):
        if not _evaluate(eq.when, encode, truth):
            continue
        expr = eq.expr.xreplace({sp.Symbol(n): ssa(n, v) for n, v in current.items()})
        # a flag, or whether an option is given, that decides the case is known in it: a choice on it inside
        # the expression (``only_if=centered`` in the case where centered holds, or fails) is taken here
        if not known.keys().isdisjoint(expr.free_symbols):
            expr = expr.xreplace(known)
        if eq.kind != "let" and expr == ssa(eq.target, current.get(eq.target, 0)):
            continue  # x <- x: an only_if whose flag fails in this case
        current[eq.target] = current.get(eq.target, 0) + 1
        role = (
            Role.LET
            if eq.kind == "let"
            else {"w": Role.PARAM, "g": Role.GRAD}.get(
                eq.target, Role.STATE if eq.target in rule.states else Role.LET
            )
        )
        body.append(
            Assign(eq.target, current[eq.target], expr, role, label=eq.label, equation=i, origin=eq.origin)
        )
    return body
