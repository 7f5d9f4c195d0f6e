"""The JAX backend: pure functions of traced arrays, an optax GradientTransformation."""

from __future__ import annotations

from optforge.compiler.analysis import static_hypers, switch_hypers
from optforge.compiler.ir import Assign, Form, Role
from optforge.compiler.passes.integers import promote_sections

from ..base import Backend, _check_call, native_names, renamed_doc
from ..printer import ExprPrinter


class JaxPrinter(ExprPrinter):
    backend = "jax"
    functions = {
        "sqrt": ("jnp.sqrt", "math.sqrt"),
        "Abs": ("jnp.abs", "abs"),
        "sign": ("jnp.sign", ""),
        "exp": ("jnp.exp", "math.exp"),
        "erf": ("jax.scipy.special.erf", "math.erf"),
        "log": ("jnp.log", "math.log"),
        "Max": ("jnp.maximum", "max"),
        "Min": ("jnp.minimum", "min"),
        "clip": ("jnp.clip", ""),
        "TensorSum": ("jnp.sum", ""),
        "TensorMax": ("jax_support.tensor_max", ""),
        "TensorSize": ("jnp.size", ""),
        "TensorRank": ("jnp.ndim", ""),
        "Upcast": ("jax_support.upcast", ""),
        "MachineEpsilon": ("jax_support.machine_epsilon", ""),
        "TensorRows": ("jax_support.rows", ""),
        "TensorCols": ("jax_support.cols", ""),
        "MatrixProduct": ("jax_support.matmul", ""),
        "Transposed": ("jax_support.transpose", ""),
        "AxisSum": ("jax_support.axis_sum", ""),
        "AxisMean": ("jax_support.axis_mean", ""),
        "AxisMax": ("jax_support.axis_max", ""),
        "CoverMax": ("jax_support.cover_max", ""),
        "CoverMin": ("jax_support.cover_min", ""),
        "float32": ("jax_support.float32", "jax_support.float32"),
    }
    where_call = "jnp.where"
    #: the hyperparameters tested only against 0 (``analysis.switch_hypers``): a test prints as a call that
    #: is true for an array (``optax.inject_hyperparams``), which takes the computation that is on
    switches: frozenset[str] = frozenset()

    def _switch(self, expr) -> str | None:
        if expr.rhs == 0 and str(expr.lhs) in self.switches:
            return str(expr.lhs)
        if expr.lhs == 0 and str(expr.rhs) in self.switches:
            return str(expr.rhs)
        return None

    def _print_Equality(self, expr) -> str:
        name = self._switch(expr)
        return self.call("jax_support.zero", name) if name else super()._print_Equality(expr)

    def _print_Unequality(self, expr) -> str:
        name = self._switch(expr)
        return self.call("jax_support.nonzero", name) if name else super()._print_Unequality(expr)

    def _print_AsFloat(self, expr) -> str:
        """A traced integer (the int32 step) read as a real: a weakly typed float, as a Python int would be."""
        return self.call("jax_support.as_float", self._print(expr.args[0]))

    and_call = "jnp.logical_and"
    or_call = "jnp.logical_or"
    not_call = "jnp.logical_not"


#: optax's names for a rule's hyperparameters, where optax has the concept (``optax.adam(b1, b2, eps)``);
#: the rule's names are still accepted
OPTAX_NAMES = {"beta_1": "b1", "beta_2": "b2", "beta1": "b1", "beta2": "b2", "epsilon": "eps"}


def optax_names(names: list[str]) -> dict[str, tuple[str, None]]:
    """``{rule's name: (optax's name, None)}`` for a rule's hyperparameters ``names``."""
    return native_names(names, {}, OPTAX_NAMES)


class JaxBackend(Backend):
    name = "jax"
    form = Form.INCREMENT  # an optax transformation returns the change of the parameters
    printer = JaxPrinter
    # under jit the step and the learning rate (a schedule's value) are traced arrays
    array_names = frozenset({"t", "n", "learning_rate", "loss"})
    hyperparameters_are_numbers = False
    global_reductions_are_arrays = True
    reduce_init = {"sum": "0.0", "max": "-jnp.inf"}
    stages = "options_jax"

    def always_arrays(self, program):
        """The step, the rate, and every real hyperparameter that ``optax.inject_hyperparams`` may pass as a
        traced array (those whose value decides no computation): a function of one is ``jnp.sqrt``, never
        ``math.sqrt``, which a traced value cannot take. A number that 0 turns off (``switch_hypers``) stays
        a number here: its tests are Python's, through ``jax_support.zero``, true of an array."""
        floats = {h.name for h in program.hypers if h.kind == "float"}
        return self.array_names | (floats - static_hypers(program))

    def make_printer(self, program, scopes):
        printer = super().make_printer(program, scopes)
        printer.switches = frozenset(switch_hypers(program))
        return printer

    def case_sections(self, program, case):
        # the step is an int32 array here: integers read as reals are converted first (passes/integers.py)
        return promote_sections(program, case.sections)

    def plain_statement(self, a: Assign, p: ExprPrinter) -> list[str]:
        if a.role == Role.UPDATE and a.expr == 0:
            return ["update = jnp.zeros_like(g)"]
        return [f"{p.name_of(a.lhs)} = {p.doprint(a.expr)}"]

    def _hypers(self, program):
        """The base's; a real hyperparameter may be a 0-d array (``optax.inject_hyperparams``), unless its value
        decides which computation runs (``static_hypers``)."""
        hypers = super()._hypers(program)
        by_name = {h.name: h for h in program.hypers}
        static = static_hypers(program) - switch_hypers(program)
        own = {h.name for h in (program.inner or program).hypers}
        renamed = optax_names([h["name"] for h in hypers])
        for h in hypers:
            h["key"], h["index"] = renamed.get(h["name"], (h["name"], None))
            if h["check"]:  # every renamed one reads its alias, whatever its kind
                arrays = h["name"] not in static if h["kind"] == "float" else None
                h["check"] = _check_call(
                    by_name[h["name"]],
                    h["key"],
                    arrays=arrays,
                    alias=h["key"] != h["name"],
                    stages=None if h["name"] in own else self.stages,
                )
        return hypers

    def context(self, program):
        ctx = super().context(program)
        _check_layout(program.rule, ctx)
        ctx["renamed"] = renamed = [h for h in ctx["others"] if h["key"] != h["name"]]
        ctx["renamed_doc"] = renamed_doc(renamed)
        return ctx


def _check_layout(rule: str, ctx) -> None:
    from optforge.compiler.errors import BackendError

    for case in ctx["cases"]:
        kinds = [s["kind"] for s in case["sections"]]
        if kinds.count("tensor") != 1:
            raise BackendError(
                rule, "jax", f"a case with sections {kinds} (one loop over the tensors is supported)"
            )
