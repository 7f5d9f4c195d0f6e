"""Integers: which values of a step are integers, and where they are read as real numbers.

The step ``n`` (calls so far), ``t`` and integer options (``gradient_accumulation_steps``) are integers;
so is any value computed from integers with ``+``, ``-``, ``*``, a power to a literal natural number,
``idiv``, ``imod``, ``max``/``min``/``abs``/``sign`` or a choice between integers. A backend in which the
step is an integer *array* (JAX, where ``count`` is int32 under ``jit``) computes ``(t - 1) / N`` or
``1 / t`` in the integer type's float (float32), whatever the parameters' precision; Python ints (NumPy,
torch, the fused path's once-per-step values) are exact and promote like a float64 scalar.

:func:`promote` marks each integer value that reads the step and is used as a real number (an operand of
``/``, of a product with a non-integer, of ``sqrt``, an exponent...) with :class:`~..ir.AsFloat`, so that
such a backend converts it once, exactly, before the real arithmetic. Integers compared (``t > 1``,
``imod(t, N) == 0``) or divided exactly (``idiv``, ``imod``) stay integers.
"""

from __future__ import annotations

import dataclasses

import sympy as sp
from sympy.core.relational import Relational
from sympy.logic.boolalg import Boolean

from ..dsl import idiv, imod
from ..errors import RuleError
from ..ir import AsFloat, Assign, Program, Role, Section

_INTEGER_FUNCTIONS = (idiv, imod, sp.Max, sp.Min, sp.Abs, sp.sign)


def is_integer(expr: sp.Basic, integers: set[str]) -> bool:
    """Whether ``expr`` is an integer when the names in ``integers`` (SSA names) are."""
    if isinstance(expr, sp.Integer):
        return True
    if isinstance(expr, sp.Symbol):
        return expr.name in integers
    if isinstance(expr, (sp.Add, sp.Mul)) or isinstance(expr, _INTEGER_FUNCTIONS):
        return all(is_integer(a, integers) for a in expr.args)
    if isinstance(expr, sp.Pow):
        b, e = expr.args
        return isinstance(e, sp.Integer) and e >= 0 and is_integer(b, integers)
    if isinstance(expr, sp.Piecewise):
        return all(is_integer(v, integers) for v, _ in expr.args)
    return False


def integer_names(program: Program, body: tuple[Assign, ...]) -> tuple[set[str], set[str]]:
    """(integers, run-time integers): SSA names of integer values; those of them computed from the step."""
    options = {h.name for h in program.hypers if h.kind == "int"}
    integers = {"n", "t"} | options
    stepped = {"n", "t"}
    for a in body:
        if (
            a.role in (Role.LET, Role.TEMP)
            and not isinstance(a.expr, Boolean)
            and is_integer(a.expr, integers)
        ):
            integers.add(a.lhs.name)
            if any(s.name in stepped for s in a.expr.free_symbols):
                stepped.add(a.lhs.name)
    return integers, stepped


def promote(expr: sp.Basic, integers: set[str], stepped: set[str]) -> sp.Basic:
    """``expr``, a real value, with each run-time integer it reads as a real number wrapped in AsFloat."""

    def real(e: sp.Basic) -> sp.Basic:
        if isinstance(e, (Boolean, Relational)) and not isinstance(e, sp.Symbol):  # a Symbol is a Boolean too
            return condition(e)
        if is_integer(e, integers):
            return AsFloat(e) if any(s.name in stepped for s in e.free_symbols) else e
        if isinstance(e, sp.Piecewise):
            return sp.Piecewise(*[(real(v), condition(c)) for v, c in e.args])
        if isinstance(e, (idiv, imod)):
            return e.func(*[integer(a) for a in e.args])
        return rebuild(e, [real(a) for a in e.args])

    def integer(e: sp.Basic) -> sp.Basic:
        return e if is_integer(e, integers) else real(e)

    def condition(e: sp.Basic) -> sp.Basic:
        if isinstance(e, Relational):
            return rebuild(e, [integer(a) for a in e.args])
        if isinstance(e, Boolean) and e.args:
            return rebuild(e, [condition(a) for a in e.args])
        return e

    def rebuild(e: sp.Basic, args: list) -> sp.Basic:
        if not e.args or all(a is b for a, b in zip(args, e.args)):
            return e
        if isinstance(e, (sp.Add, sp.Mul, sp.Pow)):
            return e.func(*args, evaluate=False)
        return e.func(*args)

    return real(expr)


def promote_sections(program: Program, sections: tuple[Section, ...]) -> tuple[Section, ...]:
    """The sections of a case with each run-time integer read as a real number marked (see the module)."""
    integers, stepped = integer_names(program, tuple(a for s in sections for a in s.body))
    return tuple(
        dataclasses.replace(
            s,
            body=tuple(
                a
                if a.lhs.name in integers
                else dataclasses.replace(a, expr=promote(a.expr, integers, stepped))
                for a in s.body
            ),
        )
        for s in sections
    )


def check_integer_operands(program: Program) -> Program:
    """``idiv`` and ``imod`` of integers only: ``imod(t, k)`` with a real hyperparameter ``k`` computed a
    real remainder in every backend, silently (a user's Lookahead with ``k=2.5``). A RuleError naming the
    equation and the operand."""
    for case in program.cases:
        integers, _ = integer_names(program, case.body)
        for a in case.body:
            for node in sp.preorder_traversal(a.expr):
                if not isinstance(node, (idiv, imod)):
                    continue
                for arg in node.args:
                    if not is_integer(arg, integers):
                        written = program.written(a.equation) if a.equation is not None else {}
                        raise RuleError(
                            program.rule,
                            f"{type(node).__name__} takes integers (n, t, integer hyperparameters, integer"
                            f" literals and values computed from them); its operand `{arg}` is not one",
                            **written,
                            hint="declare it as an integer option: rule.option(name, range, meaning, integer=True,"
                            " default=...)",
                        )
    return program
