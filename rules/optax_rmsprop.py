"""RMSProp as optax defines it (optax 0.2.8: ``rmsprop``, ``scale_by_rms``, ``scale_by_stddev``, ``trace``).

``optax.rmsprop = chain(scale_by_rms or scale_by_stddev, scale_by_learning_rate(lr), trace(momentum,
nesterov))``, the trace only when ``momentum`` is not None. The second moment starts at ``initial_scale``
(not 0) and is ``nu <- (1 - decay)*g^2 + decay*nu``; with ``centered`` (``scale_by_stddev``) a first moment
``mu <- (1 - decay)*g + decay*mu``, starting at 0, is kept as well and the denominator reads the variance
``nu - mu^2``. With ``bias_correction`` both are divided by ``1 - decay^t`` (only in the denominator; the
state stays uncorrected). The scaled gradient is ``g/sqrt(v + eps)`` (``eps_in_sqrt``, the default:
optax's ``rsqrt(v + eps)``, epsilon inside the root, unlike torch) or ``g/(sqrt(v) + eps)``.

The learning rate multiplies that before the momentum: the trace accumulates learning-rate-scaled
updates, ``trace <- lr*u + momentum*trace``, and the step is ``trace`` (or, with ``nesterov``,
``lr*u + momentum*trace``, the new trace): with a learning rate that changes, this is not the same as
torch's RMSprop, whose buffer holds unscaled updates. optax's trace holds the negated updates; here it holds
them with the sign of the gradient (``w <- w - trace``). Nothing is left out: every keyword of
``optax.rmsprop`` is modelled.
"""

from optforge.compiler.dsl import Given, Rule, g, sqrt, t, w, where

RULE = Rule(
    "OptaxRmsprop",
    module="optax_rmsprop",
    title="RMSProp (optax `rmsprop`)",
    summary="optax's RMSProp: second moment from initial_scale, epsilon inside the root by default, optional"
    " centring (Graves), bias correction and a trace of the learning-rate-scaled updates as momentum.",
    references=(
        "Hinton, Overview of mini-batch gradient descent (lecture 6), 2012",
        "Graves, Generating Sequences With Recurrent Neural Networks, 2014 (centered)",
        "optax.rmsprop: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.rmsprop",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
decay = RULE.hyper(
    "decay", 0.9, "[0, 1)", "decay rate of the moving averages of g^2 (and g)", latex=r"\alpha"
)
eps = RULE.hyper(
    "eps", 1e-8, "[0, inf)", "added to the denominator, inside or outside the root", latex=r"\epsilon"
)
initial_scale = RULE.hyper(
    "initial_scale", 0.0, "[0, inf)", "initial value of the second moment (torch: 0, TF1: 1)", latex=r"\nu_0"
)
eps_in_sqrt = RULE.flag("eps_in_sqrt", True, "add eps inside the square root (else outside, as torch)")
centered = RULE.flag("centered", False, "divide by the root of the variance nu - mu^2 (Graves)")
momentum = RULE.option(
    "momentum", "[0, inf)", "decay rate of the trace of updates; None: no momentum", latex=r"\mu"
)
nesterov = RULE.flag("nesterov", False, "Nesterov momentum (with momentum only)")
bias_correction = RULE.flag("bias_correction", False, "divide the moments by 1 - decay^t in the denominator")
nu = RULE.state("nu", initial_scale, "second moment: moving average of g^2", latex=r"\nu")
mu = RULE.state("mu", 0, "first moment: moving average of g", exists_if=centered, latex=r"\mu_g")
trace = RULE.state("trace", 0, "trace of the scaled updates (momentum)", exists_if=Given(momentum), latex="b")

RULE.assign(nu, (1 - decay) * g**2 + decay * nu, "second moment")
RULE.assign(mu, (1 - decay) * g + decay * mu, "first moment", when=centered)
v = RULE.let("v", nu, "second moment in the denominator", latex="v")
RULE.assign(v, nu / (1 - decay**t), "bias correction", when=bias_correction)
mu_hat = RULE.let(
    "mu_hat", 0, "first moment in the denominator (read only when centered)", latex=r"\hat{\mu}_g"
)
RULE.assign(mu_hat, where(bias_correction, mu / (1 - decay**t), mu), "first moment", when=centered)
RULE.assign(v, v - mu_hat * mu_hat, "variance", when=centered)
u = RULE.let("u", g / sqrt(v + eps), "scaled gradient", latex="u")
RULE.assign(u, g / (sqrt(v) + eps), "epsilon outside the root", when=~eps_in_sqrt)
RULE.assign(w, w - lr * u, "parameter update", when=~Given(momentum))
RULE.assign(trace, lr * u + momentum * trace, "trace", when=Given(momentum))
RULE.assign(w, w - trace, "momentum update", when=Given(momentum) & ~nesterov)
RULE.assign(w, w - (lr * u + momentum * trace), "Nesterov update", when=Given(momentum) & nesterov)

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
# centered with bias correction: at t = 1 the variance nu_hat - mu_hat^2 = g^2 + decay*initial_scale/(1 - decay) - g^2
# is a cancellation, so a rounding of g^2 (1e6 for the tests' gradients of 1e3) is amplified: with initial_scale=1,
# jitted optax (XLA rewrites its arithmetic) is 4e-11 from the formula evaluated in order, which NumPy matches to
# 2e-16 (measured); initial_scale = 1e6 keeps the variance at least as large as the g^2 it is computed from, so
# the step is well conditioned (with 1000, float32 Triton and the plain torch path were 1.2e-6 apart).
RULE.config(
    "centered_nesterov",
    learning_rate=0.01,
    decay=0.8,
    eps=1e-4,
    initial_scale=1e6,
    eps_in_sqrt=False,
    centered=True,
    momentum=0.9,
    nesterov=True,
    bias_correction=True,
)
