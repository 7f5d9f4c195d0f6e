"""The NumPy backend: arrays updated in place, scalars as Python floats."""

from __future__ import annotations

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
        "TensorMax": ("numpy_support.tensor_max", ""),
        "TensorSize": ("np.size", ""),
        "TensorRank": ("np.ndim", ""),
        "Upcast": ("numpy_support.upcast", ""),
        "MachineEpsilon": ("numpy_support.machine_epsilon", ""),
        "TensorRows": ("numpy_support.rows", ""),
        "TensorCols": ("numpy_support.cols", ""),
        "MatrixProduct": ("numpy_support.matmul", ""),
        "Transposed": ("numpy_support.transpose", ""),
        "AxisSum": ("numpy_support.axis_sum", ""),
        "AxisMean": ("numpy_support.axis_mean", ""),
        "AxisMax": ("numpy_support.axis_max", ""),
        "CoverMax": ("numpy_support.cover_max", ""),
        "CoverMin": ("numpy_support.cover_min", ""),
        "float32": ("numpy_support.float32", "common.float32"),
    }
    where_call = "np.where"
    and_call = "np.logical_and"
    or_call = "np.logical_or"
    not_call = "np.logical_not"
    tests_per_tensor_values = True

    def _print_DtypeEpsilon(self, expr) -> str:
        """Only in the kernels' once-per-step code, which this printer prints (``prepare``: ``dt`` is the
        kernels' dtype); the NumPy module reads each tensor's (``MachineEpsilon``)."""
        return "float(np.finfo(dt).eps)"


class NumPyBackend(Backend):
    name = "numpy"
    printer = NumPyPrinter
    #: element-wise operations into a buffer (compiler/passes/three_address.py): the calls of the printed
    #: expression's operations, so the results are the same bit for bit; in a branch of a select, only
    #: where it is taken (``where=``: a branch not taken is not computed, and warns of nothing)
    masked = True
    stages = "options_numpy"
    ops = {
        "+": "np.add({0}, {1}, out={out}{where})",
        "-": "np.subtract({0}, {1}, out={out}{where})",
        "*": "np.multiply({0}, {1}, out={out}{where})",
        "/": "np.divide({0}, {1}, out={out}{where})",
        "**": "np.power({0}, {1}, out={out}{where})",
        "square": "np.square({0}, out={out}{where})",  # x**2
        "neg": "np.negative({0}, out={out}{where})",
        "sqrt": "np.sqrt({0}, out={out}{where})",
        "Abs": "np.abs({0}, out={out}{where})",
        "sign": "np.sign({0}, out={out}{where})",
        "exp": "np.exp({0}, out={out}{where})",
        "log": "np.log({0}, out={out}{where})",
        "Max": "np.maximum({0}, {1}, out={out}{where})",
        "Min": "np.minimum({0}, {1}, out={out}{where})",
        "clip": "np.clip({0}, {1}, {2}, out={out}{where})",
        "copy_into": "np.copyto({out}, {0})",
        "float32": "numpy_support.float32({0}, out={out})",
        # over one axis, into a register shaped like the row (column) it makes
        "AxisSum": "numpy_support.axis_sum({0}, {1}, out={out})",
        "AxisMean": "numpy_support.axis_mean({0}, {1}, out={out})",
        "AxisMax": "numpy_support.axis_max({0}, {1}, out={out})",
        # SM3's cover of a value, and a cover read per element: into a register of the result's shape
        "CoverMax": "numpy_support.cover_max({0}, {1}, out={out})",
        "CoverMin": "numpy_support.cover_min({0}, {1}, out={out})",
        # a matrix product into a register of its shape (never one of its operands')
        "MatrixProduct": "numpy_support.matmul({0}, {1}, out={out})",
        "Transposed": "numpy_support.transpose({0}, out={out})",  # a copy, not a view of a buffer
        # a select (where): the comparisons and logic into boolean masks, then a masked copy
        "<": "np.less({0}, {1}, out={out})",
        "<=": "np.less_equal({0}, {1}, out={out})",
        ">": "np.greater({0}, {1}, out={out})",
        ">=": "np.greater_equal({0}, {1}, out={out})",
        "==": "np.equal({0}, {1}, out={out})",
        "!=": "np.not_equal({0}, {1}, out={out})",
        "and": "np.logical_and({0}, {1}, out={out})",
        "or": "np.logical_or({0}, {1}, out={out})",
        "not": "np.logical_not({0}, out={out})",
        "fill": "{out}.fill({0})",
        "copy_where": "np.copyto({out}, {1}, where={0})",
        "duplicate": "{0}.copy()",  # an array held apart from the buffer it came from
    }
    forms = {"add": "{name} += {value}", "sub": "{name} -= {value}", "set": "{name}[...] = {value}"}
    support = "numpy_support"
