"""Adadelta as optax defines it (optax 0.2.8: ``adadelta = chain(add_decayed_weights(weight_decay),
scale_by_adadelta(rho, eps), scale_by_learning_rate(lr))``).

Both running averages are optax's moments, ``(1 - rho)*x^2 + rho*average``: of the squared gradient, updated
first, and of the squared update, updated after the update it averages. The update is the gradient scaled
by ``sqrt(E[u^2] + eps)/sqrt(E[g^2] + eps)``, with eps inside both roots and the previous step's average of
squared updates in the numerator. ``weight_decay`` is coupled: ``weight_decay*w`` is added to the gradient
before the averages (``add_decayed_weights`` comes first in the chain). The learning rate has no default,
as in optax (Zeiler's Adadelta has none: torch.optim.Adadelta's default is 1.0). Left out:
``weight_decay_mask``.
"""

from optforge.compiler.dsl import Ne, Rule, g, sqrt, w

OptaxAdadelta = Rule(
    "OptaxAdadelta",
    module="optax_adadelta",
    title="Adadelta (optax `adadelta`)",
    summary="The gradient scaled by the ratio of the roots of two running averages, of the squared updates"
    " and of the squared gradients: two states per parameter.",
    references=(
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701, 2012",
        "optax.adadelta: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adadelta",
    ),
)
lr = OptaxAdadelta.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
rho = OptaxAdadelta.hyper("rho", 0.9, "[0, 1]", "decay rate of both running averages", latex=r"\rho")
eps = OptaxAdadelta.hyper("eps", 1e-6, "[0, inf)", "added inside both square roots", latex=r"\epsilon")
weight_decay = OptaxAdadelta.hyper(
    "weight_decay", 0.0, "[0, inf)", "coupled weight decay, added to the gradient", latex=r"\lambda"
)
e_g = OptaxAdadelta.state("e_g", 0, "running average of the squared gradient", latex=r"E_g")
e_x = OptaxAdadelta.state("e_x", 0, "running average of the squared update", latex=r"E_u")

OptaxAdadelta.assign(g, g + weight_decay * w, "coupled weight decay", when=Ne(weight_decay, 0))
OptaxAdadelta.assign(e_g, (1 - rho) * g**2 + rho * e_g, "average of the squared gradient")
u = OptaxAdadelta.let("u", sqrt(e_x + eps) / sqrt(e_g + eps) * g, "scaled update", latex="u")
OptaxAdadelta.assign(e_x, (1 - rho) * u**2 + rho * e_x, "average of the squared update")
OptaxAdadelta.assign(w, w - lr * u, "parameter update")

OptaxAdadelta.config("default", learning_rate=1.0)  # optax has no default learning rate
OptaxAdadelta.config("decayed", learning_rate=0.5, rho=0.5, eps=1e-3, weight_decay=0.1)

RULE = OptaxAdadelta
