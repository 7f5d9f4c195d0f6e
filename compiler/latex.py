"""The rules' equations in LaTeX, in the paper's notation, for the documentation.

Time subscripts come from the order of the equations: a state read before the
equation that updates it is ``m_{t-1}``, after it ``m_t``; the gradient is
``g_t``; intermediate values carry ``_t``. Reductions print as norms and sums.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter

from .dsl import Equation

_REDUCTION_LATEX = {
    "TensorSum": "tensor",
    "TensorMax": "tensor",
    "GlobalSum": "global",
    "GlobalMax": "global",
}


class RuleLatexPrinter(LatexPrinter):
    """LaTeX with each symbol's name given by ``names`` (already subscripted)."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__({"symbol_names": {}, "mul_symbol": None})
        self.names = names

    def _print_Symbol(self, expr, style="plain") -> str:
        if type(expr).__name__ == "Given":
            return rf"{self.names.get(expr.option, expr.option)} \neq \mathrm{{None}}"
        return self.names.get(expr.name, super()._print_Symbol(expr))

    def _print_Max(self, expr, exp=None) -> str:
        return r"\max\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"

    def _print_Min(self, expr, exp=None) -> str:
        return r"\min\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"

    def _print_TensorSum(self, expr, exp=None) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return rf"\lVert {self._print(arg.base)} \rVert^2"
        return rf"\textstyle\sum {self._print(arg)}"

    def _print_TensorMax(self, expr, exp=None) -> str:
        return rf"\max_i \left({self._print(expr.args[0])}\right)_i"

    def _print_GlobalSum(self, expr, exp=None) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return rf"\textstyle\sum_{{\text{{tensors}}}} \lVert {self._print(arg.base)} \rVert^2"
        return rf"\textstyle\sum_{{\text{{tensors}}}} \sum {self._print(arg)}"

    def _print_GlobalMax(self, expr, exp=None) -> str:
        return rf"\max_{{\text{{tensors}}, i}} \left({self._print(expr.args[0])}\right)_i"

    def _print_clip(self, expr, exp=None) -> str:
        return r"\operatorname{clip}\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"

    def _print_idiv(self, expr, exp=None) -> str:
        a, b = expr.args
        return rf"\left\lfloor {self._print(a)} / {self._print(b)} \right\rfloor"

    def _print_imod(self, expr, exp=None) -> str:
        a, b = expr.args
        return rf"\left({self._print(a)} \bmod {self._print(b)}\right)"

    def _print_Not(self, expr) -> str:
        (arg,) = expr.args
        if type(arg).__name__ == "Given":
            return rf"{self.names.get(arg.option, arg.option)} = \mathrm{{None}}"
        return super()._print_Not(expr)


def latex_names(hypers, states, lets: dict[str, str]) -> dict[str, str]:
    """Symbol name -> LaTeX, without time subscripts."""
    names = {h.name: h.latex for h in hypers}
    names.update({s.name: s.latex for s in states})
    names.update(lets)
    return names


def equations_latex(equations: list[Equation], hypers, states, let_latex: dict[str, str]) -> list[str]:
    """One LaTeX equation per rule equation, with time subscripts from the order of the equations."""
    base = latex_names(hypers, states, let_latex)
    state_names = {s.name for s in states} | {"w"}
    updated: set[str] = set()
    out = []
    for eq in equations:
        names = {"g": "g_t", "t": "t", "n": "n", "learning_rate": base.get("learning_rate", r"\eta") + "_t"}
        for name, tex in base.items():
            if name == "learning_rate":
                continue
            if name in state_names:
                names[name] = _sub(tex, "t" if name in updated else "t-1")
            elif name in let_latex:
                names[name] = tex if "_{t" in tex or name == "is_update" else _sub(tex, "t")
            else:
                names[name] = tex
        names.setdefault("w", "w_t" if "w" in updated else "w_{t-1}")
        if "w" in state_names:
            names["w"] = "w_t" if "w" in updated else "w_{t-1}"
        printer = RuleLatexPrinter(names)
        expr, cond = eq.expr, None
        if isinstance(expr, sp.Piecewise) and len(expr.args) == 2:
            (value, c), (other, _) = expr.args
            if other == sp.Symbol(eq.target) or (eq.kind == "let" and other == 0):
                expr, cond = value, c
        own = sp.Symbol(eq.target)
        if (
            isinstance(expr, sp.Add) and own in expr.args and eq.target != "g"
        ):  # x_{t-1} + ..., as papers write it
            rest = printer.doprint(sp.Add(*[a for a in expr.args if a != own]))
            rhs = f"{names.get(eq.target, eq.target)} {'-' if rest.startswith('-') else '+'} {rest.lstrip('- ')}"
        else:
            rhs = printer.doprint(expr)
        rhs = re.sub(r"(\d) \{(\d)", r"\1 \\cdot {\2", rhs)  # 0.5 {0.96}^t would read as 0.50.96^t
        if eq.target in state_names:
            updated.add(eq.target)
        lhs_names = dict(names)
        if eq.target in state_names:
            lhs_names[eq.target] = _sub(base.get(eq.target, "w"), "t")
        lhs = lhs_names.get(eq.target, eq.target) if eq.target != "g" else "g_t"
        text = f"{lhs} = {rhs}" if eq.kind == "let" or eq.target not in ("g",) else rf"{lhs} \leftarrow {rhs}"
        if eq.target == "t":
            text = f"t = {rhs}"
        if cond is not None:
            text += rf" \quad \text{{if }} {printer.doprint(cond)}"
        if eq.when is not sp.true:
            text += rf" \quad \text{{if }} {printer.doprint(eq.when)}"
        out.append(text)
    return out


def _sub(tex: str, sub: str) -> str:
    """Append a time subscript: ``\\beta`` -> ``\\beta_{t}``; ``v_{1}`` -> ``v_{1,t}``."""
    if tex.endswith("}") and "_{" in tex:
        head, _, inner = tex.rpartition("_{")
        return f"{head}_{{{inner[:-1]},{sub}}}"
    return f"{tex}_{{{sub}}}"
