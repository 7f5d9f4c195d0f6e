"""The rules' equations in LaTeX, in the paper's notation, for the documentation.

Time subscripts come from the order of the equations: a state read before the
equation that updates it is ``m_{t-1}``, after it ``m_t``; the gradient is
``g_t``; intermediate values carry ``_t``. Reductions print as norms and sums.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from optforge.compiler.dsl import Equation, Given
from optforge.compiler.render import RuleOrder

_REDUCTION_LATEX = {
    "TensorSum": "tensor",
    "TensorMax": "tensor",
    "TensorSize": "tensor",
    "TensorRank": "tensor",
    "MachineEpsilon": "tensor",
    "TensorRows": "tensor",
    "TensorCols": "tensor",
    "GlobalSum": "global",
    "GlobalMax": "global",
}


class RuleLatexPrinter(RuleOrder, LatexPrinter):
    """LaTeX with each symbol's name given by ``names`` (already subscripted); a two-term difference as the
    rule wrote it (``1 - \\Pi_t \\mu_{t+1}``, not SymPy's ``- \\Pi_t \\mu_{t+1} + 1``)."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__({"symbol_names": {}, "mul_symbol": None})
        self.names = names

    def _print_Symbol(self, expr, style="plain") -> str:
        if isinstance(expr, Given):
            return rf"{self.names.get(expr.option, expr.option)} \neq \mathrm{{None}}"
        return self.names.get(expr.name, super()._print_Symbol(expr))

    def parenthesize_super(self, s: str) -> str:
        """A power's base that ends in a superscript is braced: SymPy knows ``^``; a prime (a name assigned
        again in the step, ``\\hat{\\mu}'_{t}``) is one too, and ``\\hat{\\mu}'_{t}^{2}`` is a double
        superscript to KaTeX."""
        return f"{{{s}}}" if "'" in s else super().parenthesize_super(s)

    def _print_Max(self, expr, exp=None) -> str:
        return r"\max\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"

    def _print_Min(self, expr, exp=None) -> str:
        return r"\min\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"

    def _print_TensorSum(self, expr, exp=None) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return rf"\lVert {self._print(arg.base)} \rVert^2"
        return rf"\textstyle\sum {self.parenthesize(arg, PRECEDENCE['Mul'], strict=True)}"

    def _print_Upcast(self, expr, exp=None) -> str:  # the parameter, read in at least float32
        return self._print(expr.args[0])

    def _print_float32(self, expr, exp=None) -> str:
        return rf"\operatorname{{fl}}_{{32}}\left({self._print(expr.args[0])}\right)"

    def _print_TensorSize(self, expr, exp=None) -> str:
        return r"\operatorname{size}(w)"

    def _print_TensorRank(self, expr, exp=None) -> str:
        return r"\operatorname{ndim}(w)"

    def _print_MachineEpsilon(self, expr, exp=None) -> str:
        return r"\epsilon_{\mathrm{mach}}"

    def _print_axis_reduction(self, expr, exp=None) -> str:
        r"""A reduction over one axis, kept with length 1: ``\operatorname{mean}_{\text{axis } -1}(x)``."""
        word = expr.word
        return (
            rf"\operatorname{{{word}}}_{{\text{{axis }} {expr.axis}}}\left({self._print(expr.args[0])}\right)"
        )

    _print_AxisSum = _print_AxisMean = _print_AxisMax = _print_axis_reduction

    def _print_Str(self, expr, exp=None) -> str:  # a choice's value: ``\text{sps+}``, ``\text{match\_rms}``
        text = re.sub(r"([_&%#$])", r"\\\1", expr.name)
        return rf"\text{{{text}}}"

    def _print_CoverMax(self, expr, exp=None) -> str:
        r"""SM3's cover: for each slice ``S_r`` (each index of each axis), the maximum over it."""
        return rf"\max_{{S_r}}\left({self._print(expr.args[0])}\right)"

    def _print_CoverMin(self, expr, exp=None) -> str:
        r"""Per element ``i``, the minimum of the cover over the slices through it."""
        return rf"\min_{{S_r \ni i}}\left({self._print(expr.args[0])}\right)_r"

    def _print_TensorRows(self, expr, exp=None) -> str:
        return r"\operatorname{rows}(w)"

    def _print_TensorCols(self, expr, exp=None) -> str:
        return r"\operatorname{cols}(w)"

    def _print_MatrixProduct(self, expr, exp=None) -> str:
        """A matrix product as juxtaposition, each factor parenthesised where it is a sum."""
        out = " ".join(self.parenthesize(a, PRECEDENCE["Mul"], strict=True) for a in expr.args)
        return rf"\left({out}\right)^{{{exp}}}" if exp else out

    def _print_Transposed(self, expr, exp=None) -> str:
        (arg,) = expr.args
        inner = self._print(arg) if isinstance(arg, sp.Symbol) else rf"\left({self._print(arg)}\right)"
        out = rf"{{{inner}}}^{{\top}}"
        return rf"\left({out}\right)^{{{exp}}}" if exp else out

    def _print_TensorMax(self, expr, exp=None) -> str:
        return rf"\max_i \left({self._print(expr.args[0])}\right)_i"

    def _print_GlobalSum(self, expr, exp=None) -> str:
        (arg,) = expr.args
        if isinstance(arg, sp.Pow) and arg.exp == 2:
            return rf"\textstyle\sum_{{\text{{tensors}}}} \lVert {self._print(arg.base)} \rVert^2"
        return rf"\textstyle\sum_{{\text{{tensors}}}} \sum {self.parenthesize(arg, PRECEDENCE['Mul'], strict=True)}"

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
        if isinstance(arg, Given):
            return rf"{self.names.get(arg.option, arg.option)} = \mathrm{{None}}"
        return super()._print_Not(expr)


def latex_names(hypers, states, lets: dict[str, str]) -> dict[str, str]:
    """Symbol name -> LaTeX, without time subscripts."""
    names = {h.name: h.latex for h in hypers}
    names.update({s.name: s.latex for s in states})
    names.update(lets)
    return names


def equations_latex(
    equations: list[Equation], hypers, states, let_latex: dict[str, str], *, after_step: bool = False
) -> list[str]:
    """One LaTeX equation per rule equation, with time subscripts from the order of the equations.

    A state read before the equation that updates it is ``m_{t-1}``, after it ``m_t``; a value assigned
    again (a ``let`` or a state updated twice in a step) takes a prime per reassignment, ``a'_t``, so that
    no equation has the same name on both sides. ``after_step``: the equations run after the last step
    (finalisers): every state is at ``t`` and the parameter they set is plain ``w``.
    """
    base = latex_names(hypers, states, let_latex)
    state_names = {s.name for s in states} | {"w"}
    versioned = ({s.name for s in states} | set(let_latex)) - {"t"}  # names that get primes
    updated: set[str] = set(state_names) if after_step else set()
    version: dict[str, int] = {}
    assigned: set[str] = set()
    out = []
    for eq in equations:
        names = {"g": "g_t", "t": "t", "n": "n", "learning_rate": base.get("learning_rate", r"\eta") + "_t"}
        names["loss"] = r"f(w_{t-1})"  # the objective's value the step is given
        for name, tex in base.items():
            if name == "learning_rate":
                continue
            tex = _prime(tex, version.get(name, 0))
            if name in state_names:
                names[name] = _sub(tex, "t" if name in updated else "t-1")
            elif name in let_latex:
                names[name] = tex if name == "is_update" else _sub(tex, "t")
            else:
                names[name] = tex
        if "w" not in base:
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
        # the left-hand side: a name already assigned in this step gets a new version (a prime)
        if eq.target in versioned:
            version[eq.target] = (
                version[eq.target] + 1 if eq.target in assigned else version.get(eq.target, 0)
            )
            assigned.add(eq.target)
        if eq.target in state_names:
            updated.add(eq.target)
        if eq.target == "w" and after_step:
            lhs = "w"
        elif eq.target == "g":
            lhs = "g_t"
        elif eq.target in state_names:
            lhs = _sub(_prime(base.get(eq.target, "w"), version.get(eq.target, 0)), "t")
        elif eq.target in let_latex and eq.target != "is_update":
            lhs = _sub(_prime(base[eq.target], version.get(eq.target, 0)), "t")
        else:
            lhs = names.get(eq.target, eq.target)
        if lhs == rhs and eq.kind == "let":  # a name for a value that already prints so (d_{t-1} = d)
            if isinstance(expr, sp.Symbol) and expr.name in state_names and expr.name not in updated:
                what = rf"\text{{(kept before }} {base.get(expr.name, expr.name)} \text{{ is updated)}}"
            else:
                what = r"\text{(another name for this value)}"
            text = rf"{lhs} \quad {what}"
        elif eq.target == "g":
            text = rf"{lhs} \leftarrow {rhs}"
        else:
            text = f"{lhs} = {rhs}"
        if eq.target == "t":
            text = f"t = {rhs}"
        if cond is not None:
            text += rf" \quad \text{{if }} {printer.doprint(cond)}"
        if eq.when is not sp.true:
            text += rf" \quad \text{{if }} {printer.doprint(eq.when)}"
        out.append(text)
    return out


_TIME = re.compile(r"^\s*t\s*([+-]\s*\d+)?\s*$")


def _split_subscript(tex: str) -> tuple[str, list[str] | None]:
    """``m_{1,t}`` -> (``m``, ["1", "t"]); ``m_1`` -> (``m``, ["1"]); ``\\hat{m}`` -> (``\\hat{m}``, None).

    Only a subscript at the very end counts (``\\mathrm{a\\_b}`` has none: its underscore is escaped)."""
    if tex.endswith("}"):
        depth = 0
        for i in range(len(tex) - 1, -1, -1):
            depth += {"}": 1, "{": -1}.get(tex[i], 0)
            if depth == 0:
                break
        if i >= 1 and tex[i - 1] == "_" and (i < 2 or tex[i - 2] != "\\"):
            items, depth, cur = [], 0, ""
            for ch in tex[i + 1 : -1]:
                depth += {"{": 1, "}": -1}.get(ch, 0)
                if ch == "," and depth == 0:
                    items.append(cur)
                    cur = ""
                else:
                    cur += ch
            return tex[: i - 1], [*items, cur]
        return tex, None
    m = re.search(r"(?<!\\)_([A-Za-z0-9]|\\[A-Za-z]+)$", tex)
    if m:
        return tex[: m.start()], [m.group(1)]
    return tex, None


def _sub(tex: str, sub: str) -> str:
    """Add a time subscript once: ``\\beta`` -> ``\\beta_{t}``; ``v_{1}`` and ``v_1`` -> ``v_{1,t}``;
    a name that already carries a time index (``\\alpha_t``, ``\\beta_{3,t}``, ``d_{t-1}``) is left as it is."""
    head, items = _split_subscript(tex)
    if items is None:
        return f"{tex}_{{{sub}}}"
    if any(_TIME.match(x) for x in items):
        return tex
    return f"{head}_{{{','.join([*items, sub])}}}"


def _prime(tex: str, k: int) -> str:
    """The k-th reassignment of a name: ``a`` -> ``a'``, ``m_{1}`` -> ``m'_{1}``, beyond three ``a^{(4)}``."""
    if k == 0:
        return tex
    head, items = _split_subscript(tex)
    if "^" in head:  # a name with a superscript of its own (g^{prev}): primed, it is braced first
        head = f"{{{head}}}"
    mark = "'" * k if k <= 3 else f"^{{({k})}}"
    return head + mark + ("" if items is None else f"_{{{','.join(items)}}}")
