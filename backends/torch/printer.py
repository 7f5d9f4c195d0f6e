"""The torch backend: a ``torch.optim.Optimizer`` whose tensors are updated in place."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import base
from optforge.compiler.passes.scope import scopes_of

from ..base import Backend, check_spec, native_names, renamed_doc
from ..printer import ExprPrinter


class _ZeroD(sp.Function):
    """A number printed as a 0-d tensor (float64, as global state: ``torch_support.global_value``)."""

    nargs = 1


class TorchPrinter(ExprPrinter):
    backend = "torch"
    functions = {
        "sqrt": ("torch.sqrt", "math.sqrt"),
        "Abs": ("torch.abs", "abs"),
        "sign": ("torch_support.sign", ""),  # torch.sign(nan) is 0; NaN everywhere else
        "exp": ("torch.exp", "math.exp"),
        "erf": ("torch.special.erf", "math.erf"),
        "log": ("torch.log", "math.log"),
        "Max": ("torch.maximum", "max"),
        "Min": ("torch.minimum", "min"),
        "clip": ("torch.clamp", ""),
        "TensorSum": ("torch.sum", ""),
        "Copy": ("torch.clone", ""),
        "TensorMax": ("torch_support.tensor_max", ""),
        "TensorSize": ("torch.numel", ""),
        "TensorRank": ("torch_support.rank", ""),
        "Upcast": ("torch_support.upcast", ""),
        "MachineEpsilon": ("torch_support.machine_epsilon", ""),
        "TensorRows": ("torch_support.rows", ""),
        "TensorCols": ("torch_support.cols", ""),
        "MatrixProduct": ("torch_support.matmul", ""),
        "Transposed": ("torch_support.transpose", ""),
        "AxisSum": ("torch_support.axis_sum", ""),
        "AxisMean": ("torch_support.axis_mean", ""),
        "AxisMax": ("torch_support.axis_max", ""),
        "CoverMax": ("torch_support.cover_max", ""),
        "CoverMin": ("torch_support.cover_min", ""),
        "float32": ("torch_support.float32", "torch_support.float32"),
    }
    where_call = "torch.where"
    and_call = "torch.logical_and"
    or_call = "torch.logical_or"
    not_call = "torch.logical_not"

    def _print_Piecewise(self, expr) -> str:
        # a Python choice between a 0-d tensor (a reduction's value, a global state) and a number is a 0-d
        # tensor whichever branch is taken: the number is made one (torch.maximum and the other tensor
        # functions take no number; ``dk = c if t == 1 else d`` was a float at the first step)
        static = not any(self.is_array(c) for _, c in expr.args)  # a Python test, not torch.where
        if static and self.is_array(expr) and not any(base(s) in self.elements for s in expr.free_symbols):
            pieces = [(v if self.is_array(v) else _ZeroD(v), c) for v, c in expr.args]
            if any(isinstance(v, _ZeroD) for v, _ in pieces):
                expr = sp.Piecewise(*pieces, evaluate=False)
        return super()._print_Piecewise(expr)

    def _print__ZeroD(self, expr) -> str:
        return self.call("torch_support.global_value", self._print(expr.args[0]))

    def call_text(self, fn: str, array: bool, args: list[str], arrays: tuple[bool, ...] = ()) -> str:
        # torch.maximum needs two tensors; a tensor against a number is a clamp
        if fn in ("Max", "Min") and len(arrays) == 2 and arrays[0] != arrays[1]:
            x, c = (args[0], args[1]) if arrays[0] else (args[1], args[0])
            return self.call("torch.clamp", x, f"{'min' if fn == 'Max' else 'max'}={c}")
        return super().call_text(fn, array, args, arrays)


#: torch's abs, neg, sign and clamp want ``out=`` of their input's dtype (float32 parameters may have float64
#: state): where the buffer is wider, the call is made as printed and copied in
_SAME_DTYPE = "{call_out} if {x}.dtype == {{out}}.dtype else {{out}}.copy_({call})"


def _same_dtype(fn: str, x: str, rest: str = "") -> str:
    return _SAME_DTYPE.format(
        call_out=f"torch.{fn}({x}{rest}, out={{out}})", x=x, call=f"torch.{fn}({x}{rest})"
    )


#: torch's names for a rule's hyperparameters, where torch has the concept: a pair of the rule's becomes a
#: tuple (Adam's ``betas``), a single one is renamed (``eps``); the rule's names are still accepted
TORCH_PAIRS = {
    ("beta_1", "beta_2"): "betas",
    ("beta1", "beta2"): "betas",
    ("b1", "b2"): "betas",
    ("etaminus", "etaplus"): "etas",  # Rprop
    ("step_size_min", "step_size_max"): "step_sizes",
    ("eps1", "eps2"): "eps",  # Adafactor
    ("adam_beta1", "adam_beta2"): "adam_betas",  # TorchMuon's AdamW
}
TORCH_NAMES = {"epsilon": "eps"}


def torch_names(names: list[str]) -> dict[str, tuple[str, int | None]]:
    """``{rule's name: (torch's key in a parameter group, index in its tuple or None)}`` for a rule's
    hyperparameters ``names`` (only where torch's name is not one of the rule's own)."""
    return native_names(names, TORCH_PAIRS, TORCH_NAMES)


class TorchBackend(Backend):
    reduce_init = {"sum": "0.0", "max": "torch.tensor(-math.inf)"}
    name = "torch"
    printer = TorchPrinter
    global_reductions_are_arrays = True  # 0-d tensors: no device synchronisation
    array_names = frozenset({"loss"})  # the objective's value: a 0-d tensor (torch_support.loss_value)
    tensor_reductions_communicate = True  # a DTensor's sum adds its shards'
    #: element-wise operations into a buffer (compiler/passes/three_address.py), and the compound in-place
    #: calls: one pass instead of two, which may round once where the printed expression rounds twice
    ops = {
        "+": "torch.add({0}, {1}, out={out})",
        "-": "torch.sub({0}, {1}, out={out})",
        "*": "torch.mul({0}, {1}, out={out})",
        "/": "torch.div({0}, {1}, out={out})",
        "**": "torch.pow({0}, {1}, out={out})",
        "square": "torch.pow({0}, {1}, out={out})",  # x**2
        "neg": _same_dtype("neg", "{0}"),
        "sqrt": "torch.sqrt({0}, out={out})",
        "Abs": _same_dtype("abs", "{0}"),
        "sign": "torch_support.sign({0}, out={out})",
        "exp": "torch.exp({0}, out={out})",
        "log": "torch.log({0}, out={out})",
        "erf": "torch.special.erf({0}, out={out})",
        "Max": "torch.maximum({0}, {1}, out={out})",
        "Min": "torch.minimum({0}, {1}, out={out})",
        "Max/array,scalar": _same_dtype("clamp", "{0}", ", min={1}"),
        "Max/scalar,array": _same_dtype("clamp", "{1}", ", min={0}"),
        "Min/array,scalar": _same_dtype("clamp", "{0}", ", max={1}"),
        "Min/scalar,array": _same_dtype("clamp", "{1}", ", max={0}"),
        "clip": _same_dtype("clamp", "{0}", ", {1}, {2}"),
        "add_scaled": "torch.add({0}, {1}, alpha={alpha}, out={out})",  # a + c*x
        "copy_into": "{out}.copy_({0})",
        # over one axis, into a register shaped like the row (column) it makes
        "AxisSum": "torch_support.axis_sum({0}, {1}, out={out})",
        "AxisMean": "torch_support.axis_mean({0}, {1}, out={out})",
        "AxisMax": "torch_support.axis_max({0}, {1}, out={out})",
        # SM3's cover of a value, and a cover read per element: into a register of the result's shape
        "CoverMax": "torch_support.cover_max({0}, {1}, out={out})",
        "CoverMin": "torch_support.cover_min({0}, {1}, out={out})",
        # a matrix product into a register of its shape (never one of its operands')
        "MatrixProduct": "torch_support.matmul({0}, {1}, out={out})",
        "Transposed": "torch_support.transpose({0}, out={out})",  # a copy, not a view of a buffer
        # a select (where): the comparisons and logic into boolean masks, then a masked copy
        "<": "torch.lt({0}, {1}, out={out})",
        "<=": "torch.le({0}, {1}, out={out})",
        ">": "torch.gt({0}, {1}, out={out})",
        ">=": "torch.ge({0}, {1}, out={out})",
        "==": "torch.eq({0}, {1}, out={out})",
        "!=": "torch.ne({0}, {1}, out={out})",
        "and": "torch.logical_and({0}, {1}, out={out})",
        "or": "torch.logical_or({0}, {1}, out={out})",
        "not": "torch.logical_not({0}, out={out})",
        # a test per tensor (a 0-d tensor) into a mask of the tensor's shape: out= would resize the mask
        "not/scalar": "{out}.fill_(torch.logical_not({0}))",
        "fill": "{out}.fill_({0})",
        "copy_where": "torch.where({0}, {1}, {out}, out={out})",
        "copy_where/array,scalar": "{out}.masked_fill_({0}, {1})",
        "copy_where/scalar,scalar": "{out}.masked_fill_({0}, {1})",
        "duplicate": "{0}.clone()",
        "inplace_add_scaled": "{target}.add_({0}, alpha={scale})",
        "inplace_addcmul": "{target}.addcmul_({0}, {1})",
        "inplace_addcmul_scaled": "{target}.addcmul_({0}, {1}, value={scale})",
        "inplace_addcdiv": "{target}.addcdiv_({0}, {1})",
        "inplace_addcdiv_scaled": "{target}.addcdiv_({0}, {1}, value={scale})",
    }

    def context(self, program):
        out = super().context(program)
        out["renamed"] = renamed = [h for h in out["others"] if h["key"] != h["name"]]
        out["renamed_doc"] = renamed_doc(renamed)
        # torch.optim's maximize is the runtime's on every optimizer, unless the rule has its own flag
        out["own_maximize"] = any(h["name"] == "maximize" and h["kind"] == "bool" for h in out["others"])
        # the rule's own groups of exclusive hyperparameters (Keras's options' are the runtime's)
        out["own_exclusives"] = [e for e in out["exclusives"] if not set(e) <= set(out["options"])]
        # a global state's initial value as the class declares it: a number, or where it reads the rule's
        # hyperparameters, a function of the parameter group (each group its own)
        reads = {sp.Symbol(h["name"]): sp.Symbol(h["read"]) for h in self._hypers(program)}
        printer = self.make_printer(program, scopes_of(program))
        for st in out.get("rule_global_states", []):
            init = next(s.init for s in (program.inner or program).states if s.name == st["name"])
            st["group_init"] = (
                f"lambda group: float({printer.doprint(init.xreplace(reads))})"
                if init.free_symbols & set(reads)
                else f"float({st['init']})"
            )
        return out

    def _hypers(self, program):
        """The base's, with torch's name of each (``key``: its parameter-group key, ``index`` in a tuple;
        ``read``: the expression that reads it from ``group``) and, for a pair, its partner."""
        hypers = super()._hypers(program)
        renamed = torch_names([h["name"] for h in hypers])
        by_name = {h.name: h for h in program.hypers}
        for h in hypers:
            key, index = renamed.get(h["name"], (h["name"], None))
            h["key"], h["index"] = key, index
            h["read"] = f'group["{key}"]' + ("" if index is None else f"[{index}]")
            h["spec"] = check_spec(by_name[h["name"]])
        for h in hypers:
            if h["index"] == 0:
                partner = next(o for o in hypers if o["key"] == h["key"] and o["index"] == 1)
                h["partner"] = partner
        return hypers

    forms = {
        "add": "{name}.add_({value})",
        "sub": "{name}.sub_({value})",
        "set": "{name}.copy_({value})",
        "fill": "{name}.fill_({value})",
    }
    support = "torch_support"
