"""The NumPy backend: arrays updated in place, scalars as Python floats."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assign, Scope, base, ssa

from ..base import Backend
from ..printer import ExprPrinter


class NumPyPrinter(ExprPrinter):
    backend = "numpy"
    functions = {
        "sqrt": ("np.sqrt", "math.sqrt"),
        "Abs": ("np.abs", "abs"),
        "sign": ("np.sign", ""),
        "exp": ("np.exp", "math.exp"),
        "erf": ("", "math.erf"),  # NumPy has no erf (it is SciPy's): a rule that needs it is an error here
        "log": ("np.log", "math.log"),
        "Max": ("np.maximum", "max"),
        "Min": ("np.minimum", "min"),
        "clip": ("np.clip", ""),
        "TensorSum": ("np.sum", ""),
        "TensorMax": ("np.max", ""),
    }
    where_call = "np.where"
    and_call = "np.logical_and"
    or_call = "np.logical_or"
    not_call = "np.logical_not"


def in_place(a: Assign, p: ExprPrinter, add: str, sub: str, assign: str) -> list[str]:
    """``x += d`` / ``x -= d`` when the new value is the old plus a term, else a full overwrite."""
    name = p.name_of(a.lhs)
    old = ssa(a.target, a.version - 1)
    e = a.expr
    if isinstance(e, sp.Add) and old in e.args:
        rest = sp.Add(*[x for x in e.args if x != old])
        if rest.could_extract_minus_sign():
            return [sub.format(name=name, expr=p.doprint(-rest))]
        return [add.format(name=name, expr=p.doprint(rest))]
    return [assign.format(name=name, expr=p.doprint(e))]


class NumPyBackend(Backend):
    name = "numpy"
    printer = NumPyPrinter

    def plain_statement(self, a: Assign, p: ExprPrinter) -> list[str]:
        name = p.name_of(a.lhs)
        if a.role in ("state", "param") and a.scope >= Scope.TENSOR:
            return in_place(a, p, "{name} += {expr}", "{name} -= {expr}", "{name}[...] = {expr}")
        code = p.doprint(a.expr)
        if isinstance(a.expr, sp.Symbol) and base(a.expr) in p.inplace:
            code += ".copy()"  # a named copy of a buffer that is updated in place later
        return [f"{name} = {code}"]
