"""The NumPy backend: arrays updated in place, scalars as Python floats."""

from __future__ import annotations

from .. import inplace
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
        "Copy": ("np.copy", ""),
        "TensorMax": ("np.max", ""),
    }
    where_call = "np.where"
    and_call = "np.logical_and"
    or_call = "np.logical_or"
    not_call = "np.logical_not"


class NumPyBackend(Backend):
    name = "numpy"
    printer = NumPyPrinter
    ops = inplace.NUMPY
    forms = {"add": "{name} += {value}", "sub": "{name} -= {value}", "set": "{name}[...] = {value}"}
    support = "numpy_support"
