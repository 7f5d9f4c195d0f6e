"""Stochastic gradient descent as optax defines it (optax 0.2.8: ``sgd = chain(trace(momentum, nesterov) if
momentum is not None else identity, scale_by_learning_rate)``).

Without ``momentum`` (None, the default) the step is ``w <- w - lr*g``. With it, a trace of the raw gradients
``trace <- g + momentum*trace`` (starting at 0, so ``trace = g`` at the first step; no dampening) is scaled
by the learning rate of the step: ``w <- w - lr*trace``, or with ``nesterov`` ``w <- w - lr*(g +
momentum*trace)`` with the new trace. The learning rate is outside the trace, as in torch's SGD (Keras puts it
inside the velocity). Left out: ``accumulator_dtype`` (the trace is kept in the parameter's dtype).
"""

from optforge.compiler.dsl import Given, Rule, g, w

RULE = Rule(
    "OptaxSgd",
    module="optax_sgd",
    title="Gradient descent with momentum (optax `sgd`)",
    summary="Plain gradient descent when `momentum` is None; otherwise a trace of the gradients, scaled by the"
    " learning rate of the step, optionally with Nesterov momentum. No trace is stored without momentum.",
    references=(
        "Sutskever et al., On the importance of initialization and momentum in deep learning, ICML 2013",
        "optax.sgd: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.sgd",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
momentum = RULE.option(
    "momentum", "[0, inf)", "decay rate of the trace of gradients; None: no momentum", latex=r"\mu"
)
nesterov = RULE.flag("nesterov", False, "Nesterov momentum (with momentum only)")
trace = RULE.state(
    "trace",
    0,
    "trace of the gradients (momentum)",
    exists_if=Given(momentum),
    latex="b",
    dtype="accumulator_dtype",
)

RULE.assign(w, w - lr * g, "gradient descent", when=~Given(momentum))
RULE.assign(trace, g + momentum * trace, "trace", when=Given(momentum))
RULE.assign(w, w - lr * trace, "momentum update", when=Given(momentum) & ~nesterov)
RULE.assign(w, w - lr * (g + momentum * trace), "Nesterov update", when=Given(momentum) & nesterov)

RULE.config("default", learning_rate=0.01)  # optax has no default learning rate
RULE.config("nesterov", learning_rate=0.05, momentum=0.9, nesterov=True)
