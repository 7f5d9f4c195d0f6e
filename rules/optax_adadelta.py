"""Adadelta as optax defines it (optax 0.2.8: ``adadelta = chain(add_decayed_weights, scale_by_adadelta,
scale_by_learning_rate)``).

The same maths as torch.optim.Adadelta: ``weight_decay*w`` is added to the gradient first (L2, through the
averages), the step is ``sqrt(e_x + eps)/sqrt(e_g + eps)*g`` and ``e_x`` averages the steps before the
learning rate scales them. Here the learning rate is required: optax's default ``learning_rate=None``
applies no scaling at all, not even the sign flip, so ``optax.adadelta()`` climbs the gradient.
"""

from optforge.compiler.dsl import Rule, g, sqrt, w

OptaxAdadelta = Rule(
    "OptaxAdadelta",
    module="optax_adadelta",
    title="Adadelta (optax `adadelta`)",
    summary="Steps scaled by the ratio of the running RMS of past steps to the running RMS of the gradients"
    " (optax's names; the learning rate required).",
    references=(
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, 2012",
        "optax.adadelta: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adadelta",
    ),
)
lr = OptaxAdadelta.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
rho = OptaxAdadelta.hyper("rho", 0.9, "[0, 1]", "decay rate of the running averages", latex=r"\rho")
eps = OptaxAdadelta.hyper("eps", 1e-6, "[0, inf)", "added inside both roots", latex=r"\epsilon")
weight_decay = OptaxAdadelta.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient first", latex=r"\lambda"
)
e_g = OptaxAdadelta.state("e_g", 0, "running average of g^2", latex="v")
e_x = OptaxAdadelta.state("e_x", 0, "running average of the squared steps", latex="u")

OptaxAdadelta.assign(g, g + weight_decay * w, "weight decay")
OptaxAdadelta.assign(e_g, (1 - rho) * g**2 + rho * e_g, "running mean square of g")
u = OptaxAdadelta.let("u", sqrt(e_x + eps) / sqrt(e_g + eps) * g, "step", latex=r"\Delta")
OptaxAdadelta.assign(e_x, (1 - rho) * u**2 + rho * e_x, "running mean square of the steps")
OptaxAdadelta.assign(w, w - lr * u, "parameter update")

OptaxAdadelta.config("default", learning_rate=1.0)  # optax's None would climb the gradient (module docstring)
OptaxAdadelta.config("decay", learning_rate=0.5, rho=0.5, eps=1e-4, weight_decay=0.1)

RULE = OptaxAdadelta
