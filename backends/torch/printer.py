"""The torch backend: a ``torch.optim.Optimizer`` whose tensors are updated in place."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assign, Role, Scope

from .. import inplace
from ..base import Backend
from ..printer import ExprPrinter


class TorchPrinter(ExprPrinter):
    backend = "torch"
    functions = {
        "sqrt": ("torch.sqrt", "math.sqrt"),
        "Abs": ("torch.abs", "abs"),
        "sign": ("torch.sign", ""),
        "exp": ("torch.exp", "math.exp"),
        "erf": ("torch.special.erf", "math.erf"),
        "log": ("torch.log", "math.log"),
        "Max": ("torch.maximum", "max"),
        "Min": ("torch.minimum", "min"),
        "clip": ("torch.clamp", ""),
        "TensorSum": ("torch.sum", ""),
        "Copy": ("torch.clone", ""),
        "TensorMax": ("torch.amax", ""),
    }
    where_call = "torch.where"
    and_call = "torch.logical_and"
    or_call = "torch.logical_or"
    not_call = "torch.logical_not"

    def minmax(self, name: str, a: sp.Basic, rest: sp.Basic, printed_rest: str) -> str:
        # torch.maximum needs two tensors; a tensor against a number is a clamp
        key = "min" if name == "Max" else "max"
        if self.is_array(a) and not self.is_array(rest):
            return self.call("torch.clamp", self._print(a), f"{key}={printed_rest}")
        if self.is_array(rest) and not self.is_array(a):
            return self.call("torch.clamp", printed_rest, f"{key}={self._print(a)}")
        return super().minmax(name, a, rest, printed_rest)


class TorchBackend(Backend):
    reduce_init = {"sum": "0.0", "max": "torch.tensor(-math.inf)"}
    name = "torch"
    printer = TorchPrinter
    global_reductions_are_arrays = True  # 0-d tensors: no device synchronisation
    ops = inplace.TORCH
    forms = {"add": "{name}.add_({value})", "sub": "{name}.sub_({value})", "set": "{name}.copy_({value})"}
    support = "torch_support"

    def fill(self, a: Assign, p: ExprPrinter) -> list[str] | None:
        if a.role in (Role.STATE, Role.PARAM) and a.scope >= Scope.TENSOR and not p.is_array(a.expr):
            return [f"{p.name_of(a.lhs)}.fill_({p.doprint(a.expr)})"]
        return None
