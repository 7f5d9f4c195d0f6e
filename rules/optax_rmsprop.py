"""RMSprop as optax defines it (optax 0.2.8: ``rmsprop``, ``scale_by_rms``, ``scale_by_stddev``, ``trace``).

``optax.rmsprop = chain(scale_by_rms | scale_by_stddev (centered), scale_by_learning_rate, trace(momentum,
nesterov))``: the mean square starts at ``initial_scale``, epsilon is inside the root unless
``eps_in_sqrt=False``, ``bias_correction`` divides the averages by ``1 - decay^t``, and the momentum traces
the updates after the learning rate has scaled them (``trace <- -lr*s + momentum*trace``, ``w <- w +
trace``): under a schedule the learning rate is inside the trace, unlike torch.optim.RMSprop.
"""

from optforge.compiler.dsl import Given, Rule, g, sqrt, t, w, where

OptaxRmsprop = Rule(
    "OptaxRmsprop",
    module="optax_rmsprop",
    title="RMSprop (optax `rmsprop`)",
    summary="Gradients scaled by the inverse root of their running mean square (epsilon inside the root by"
    " default), optionally centered and bias-corrected, with optax's momentum of the updates.",
    references=(
        "Hinton, Neural Networks for Machine Learning, lecture 6e (RMSprop)",
        "Graves, Generating Sequences With Recurrent Neural Networks, 2013 (centered)",
        "optax.rmsprop: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.rmsprop",
    ),
)
lr = OptaxRmsprop.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
decay = OptaxRmsprop.hyper("decay", 0.9, "[0, 1)", "decay rate of the running averages", latex=r"\alpha")
eps = OptaxRmsprop.hyper(
    "eps", 1e-8, "[0, inf)", "added to the mean square (see eps_in_sqrt)", latex=r"\epsilon"
)
initial_scale = OptaxRmsprop.hyper(
    "initial_scale", 0.0, "[0, inf)", "starting value of the mean square", latex=r"\nu_0"
)
eps_in_sqrt = OptaxRmsprop.flag("eps_in_sqrt", True, "epsilon inside the root (else added to the root)")
centered = OptaxRmsprop.flag("centered", False, "subtract the squared running mean of g (scale_by_stddev)")
momentum = OptaxRmsprop.option(
    "momentum", "[0, inf)", "decay of the trace of the updates (None: no trace)", latex=r"\mu"
)
nesterov = OptaxRmsprop.flag("nesterov", False, "Nesterov momentum of the trace")
bias_correction = OptaxRmsprop.flag("bias_correction", False, "divide the running averages by 1 - decay^t")
nu = OptaxRmsprop.state("nu", initial_scale, "running mean square of g", latex="v")
mu = OptaxRmsprop.state("mu", 0, "running mean of g (centered)", exists_if=centered, latex=r"\bar{g}")
trace = OptaxRmsprop.state("trace", 0, "trace of the updates", exists_if=Given(momentum), latex="b")

OptaxRmsprop.assign(nu, (1 - decay) * g**2 + decay * nu, "running mean square")
OptaxRmsprop.assign(mu, (1 - decay) * g + decay * mu, "running mean", when=centered)
correction = OptaxRmsprop.let(
    "correction", where(bias_correction, 1 - decay**t, 1), "bias correction", latex="c"
)
var = OptaxRmsprop.let("var", nu / correction, "second moment", latex="s")
OptaxRmsprop.assign(var, nu / correction - (mu / correction) ** 2, "variance (centered)", only_if=centered)
scaled = OptaxRmsprop.let("scaled", g / sqrt(var + eps), "scaled gradient", latex="u")
OptaxRmsprop.assign(
    scaled, g / (sqrt(var) + eps), "scaled gradient (eps outside the root)", only_if=~eps_in_sqrt
)
OptaxRmsprop.assign(trace, -lr * scaled + momentum * trace, "trace", when=Given(momentum))
OptaxRmsprop.assign(w, w + trace, "momentum update", when=Given(momentum) & ~nesterov)
OptaxRmsprop.assign(w, w - lr * scaled + momentum * trace, "Nesterov update", when=Given(momentum) & nesterov)
OptaxRmsprop.assign(w, w - lr * scaled, "parameter update", when=~Given(momentum))

OptaxRmsprop.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxRmsprop.config("centered_nesterov", learning_rate=0.001, centered=True, momentum=0.9, nesterov=True)
OptaxRmsprop.config(
    "eps_outside_corrected",
    learning_rate=0.003,
    eps_in_sqrt=False,
    bias_correction=True,
    initial_scale=0.1,
    eps=1e-4,
)

RULE = OptaxRmsprop
