"""Equations as people read them: the rule's equations printed for docstrings and `optforge show`.

The same rule the code is compiled from is printed here, so the docstring of a
generated module cannot drift from its code.
"""

from __future__ import annotations

import dataclasses

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from .dsl import Equation, Given
from .ir import Program


def difference(expr: sp.Add) -> tuple[sp.Expr, sp.Expr] | None:
    """``(a, b)`` for a sum of two terms that reads ``a - b`` as a rule writes it (SymPy orders ``1 - a*b``
    as ``-a*b + 1``); None for any other sum. Printing it so is the same value to the bit: a + b is b + a,
    and negation is exact."""
    if len(expr.args) == 2:
        a, b = expr.args
        if a.could_extract_minus_sign() != b.could_extract_minus_sign():
            pos, neg = (b, a) if a.could_extract_minus_sign() else (a, b)
            return pos, -neg
    return None


class RuleOrder:
    """A printer mixin: a two-term difference printed as the rule wrote it (``difference``)."""

    def _print_Add(self, expr, order=None) -> str:
        parts = difference(expr)
        if parts is None:
            return super()._print_Add(expr, order=order)
        prec = PRECEDENCE["Add"]
        return f"{self.parenthesize(parts[0], prec)} - {self.parenthesize(parts[1], prec)}"


class MathPrinter(RuleOrder, StrPrinter):
    """Plain-text maths: ``max(a, b)``, ``|g|``, ``sqrt(x)``, ``where(c, a, b)``, ``x^2``."""

    def __init__(self) -> None:
        super().__init__()

    def _print_Float(self, expr) -> str:
        return repr(float(expr))

    def _print_Abs(self, expr) -> str:
        return f"|{self._print(expr.args[0])}|"

    def _print_Max(self, expr) -> str:
        return "max(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_Min(self, expr) -> str:
        return "min(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_Piecewise(self, expr) -> str:
        out = self._print(expr.args[-1][0])
        for value, cond in reversed(expr.args[:-1]):
            out = f"where({self._print(cond)}, {self._print(value)}, {out})"
        return out

    def _print_Pow(self, expr, rational=False) -> str:
        b, e = expr.args
        if e == sp.S.Half:
            return f"sqrt({self._print(b)})"
        if e == -sp.S.Half:
            return f"1/sqrt({self._print(b)})"
        if e == -1:
            return "1/" + self.parenthesize(b, PRECEDENCE["Pow"])
        return f"{self.parenthesize(b, PRECEDENCE['Pow'], strict=False)}^{self.parenthesize(e, PRECEDENCE['Pow'], strict=False)}"

    def _print_Symbol(self, expr) -> str:
        if isinstance(expr, Given):
            return f"{expr.option} given"
        return super()._print_Symbol(expr)

    def _print_idiv(self, expr) -> str:
        a, b = expr.args
        return f"floor({self._print(a)}/{self._print(b)})"

    def _print_imod(self, expr) -> str:
        a, b = expr.args
        return f"({self._print(a)} mod {self._print(b)})"

    def _print_TensorSum(self, expr) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return f"||{self._print(arg.base)}||^2"
        return f"sum({self._print(arg)})"

    def _print_float32(self, expr) -> str:
        return f"float32({self._print(expr.args[0])})"

    def _print_TensorSize(self, expr) -> str:
        return "size"

    def _print_Upcast(self, expr) -> str:
        return self._print(expr.args[0])

    def _print_TensorRank(self, expr) -> str:
        return "rank"

    def _print_MachineEpsilon(self, expr) -> str:
        return "machine_epsilon"

    def _print_Unused(self, expr) -> str:
        return "unused"

    def _print_TensorRows(self, expr) -> str:
        return "rows"

    def _print_TensorCols(self, expr) -> str:
        return "cols"

    def _print_LargestLength(self, expr) -> str:
        return "largest_length"

    def _print_SecondLargestLength(self, expr) -> str:
        return "second_largest_length"

    def _print_AxisBySize(self, expr) -> str:
        return f"{expr.token}_axis"

    def _print_MatrixProduct(self, expr) -> str:
        a, b = expr.args  # parenthesised whole: `c*(A @ B)`, `(A @ B)^2` read as written
        return f"({self.parenthesize(a, PRECEDENCE['Mul'])} @ {self.parenthesize(b, PRECEDENCE['Mul'] + 1)})"

    def _print_Transposed(self, expr) -> str:
        return f"{self.parenthesize(expr.args[0], PRECEDENCE['Pow'] + 1)}^T"

    def _print_axis_reduction(self, expr) -> str:
        word = expr.word
        return f"{word}({self._print(expr.args[0])}, axis={expr.axis})"

    _print_AxisSum = _print_AxisMean = _print_AxisMax = _print_axis_reduction

    def _print_Str(self, expr) -> str:  # a choice's value: ``variant == 'sps+'``
        return repr(expr.name)

    def _print_CoverMax(self, expr) -> str:
        return f"cover_max({self._print(expr.args[0])})"

    def _print_CoverMin(self, expr) -> str:
        return f"cover_min({self._print(expr.args[0])})"

    def _print_TensorMax(self, expr) -> str:
        return f"max_elements({self._print(expr.args[0])})"

    def _print_GlobalSum(self, expr) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return f"sum_tensors ||{self._print(arg.base)}||^2"
        return f"sum_tensors sum({self._print(arg)})"

    def _print_GlobalMax(self, expr) -> str:
        return f"max_tensors max_elements({self._print(expr.args[0])})"

    def _print_Not(self, expr) -> str:
        return f"not {self._print(expr.args[0])}"

    def _print_Relational(self, expr) -> str:
        prec = PRECEDENCE["Relational"]
        return f"{self.parenthesize(expr.lhs, prec)} {expr.rel_op} {self.parenthesize(expr.rhs, prec)}"

    _print_Equality = _print_Relational
    _print_Unequality = _print_Relational

    def _print_And(self, expr) -> str:
        return " and ".join(self.parenthesize(a, PRECEDENCE["And"]) for a in expr.args)

    def _print_Or(self, expr) -> str:
        return " or ".join(self.parenthesize(a, PRECEDENCE["Or"]) for a in expr.args)


def math_text(expr: sp.Basic) -> str:
    return MathPrinter().doprint(expr)


def equation_text(eq: Equation) -> str:
    """``target <- expr``; when the value is the target plus terms, the target is written first."""
    arrow = "=" if eq.kind == "let" else "<-"
    own = sp.Symbol(eq.target)
    if isinstance(eq.expr, sp.Add) and own in eq.expr.args:
        rest = math_text(sp.Add(*[a for a in eq.expr.args if a != own]))
        rest = f"- {rest[1:]}" if rest.startswith("-") else f"+ {rest}"
        return f"{eq.target} {arrow} {eq.target} {rest}"
    return f"{eq.target} {arrow} {math_text(eq.expr)}"


def guarded_text(eq: Equation) -> str:
    """``x <- e    if c`` for ``x <- where(c, e, x)`` (and ``x = e    if c`` for a value computed only then)."""
    e = eq.expr
    if isinstance(e, sp.Piecewise) and len(e.args) == 2:
        (value, cond), (other, _) = e.args
        if other == sp.Symbol(eq.target) or (eq.kind == "let" and other == 0):
            return f"{equation_text(dataclasses.replace(eq, expr=value))}    if {math_text(cond)}"
    text = equation_text(eq)
    if eq.when is not sp.true:
        text += f"    if {math_text(eq.when)}"
    return text


def docstring_equations(program: Program) -> list[str]:
    """One line per equation, with its condition when it has one.

    When a transform (Keras's options) wrapped the rule, the rule's own equations come first, as
    written, then the transform's, marked by where they apply.
    """
    if not program.core:
        return [guarded_text(eq) for eq in program.equations]
    lines = [guarded_text(eq) for eq in program.core]
    core_targets = {id(eq) for eq in program.core}
    added = [eq for eq in program.equations if "_keras_options" in eq.origin and id(eq) not in core_targets]
    if added:
        lines += [
            "",
            "Keras's shared options around it (each only when given; the rule runs only on update calls):",
        ]
        lines += [guarded_text(eq) for eq in added]
    return lines


def finalizer_equations(program: Program) -> list[Equation]:
    """The finalisers (``finalize_variable_values``) as equations assigning ``w``."""
    return [Equation("w", sp.sympify(e), label, sp.true, "", "assign") for e, label in program.finalize]


def finalizer_text(program: Program) -> list[str]:
    """One line per finaliser: ``w <- e    if c    (label)``."""
    return [f"{guarded_text(eq)}    ({eq.label})" for eq in finalizer_equations(program)]
