"""Adamax and AdamaxW as optax defines them (optax 0.2.8: ``adamax = chain(scale_by_adamax,
scale_by_learning_rate)``, ``adamaxw = chain(scale_by_adamax, add_decayed_weights, scale_by_learning_rate)``).

The first moment is Adam's, ``mu <- (1 - b1)*g + b1*mu``, bias-corrected by ``1 - b1^t``; the second is the
infinity norm with ``eps`` *inside* the maximum, ``nu <- max(|g| + eps, b2*nu)`` (as torch's Adamax; Keras adds
epsilon to ``nu`` outside it), not bias-corrected. The update is ``mu/(1 - b1^t)/nu``; ``w <- w - lr*update``.
``adamaxw`` adds ``weight_decay*w`` (default 1e-4) to that update before the learning rate scales it. Left
out: ``adamaxw``'s ``mask`` and a ``weight_decay`` schedule (a number only here).
"""

from optforge.compiler.dsl import Rule, g, maximum, t, w

OptaxAdamax = Rule(
    "OptaxAdamax",
    module="optax_adamax",
    title="Adamax (optax `adamax`)",
    summary="optax's Adamax: Adam with the infinity norm max(|g| + eps, b2*nu) in place of the second moment,"
    " epsilon inside the maximum.",
    references=(
        "Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015 (section 7.1)",
        "optax.adamax: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adamax",
    ),
)
lr = OptaxAdamax.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = OptaxAdamax.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = OptaxAdamax.hyper("b2", 0.999, "[0, 1)", "decay rate of the infinity norm", latex=r"\beta_2")
eps = OptaxAdamax.hyper("eps", 1e-8, "[0, inf)", "added to |g| inside the maximum", latex=r"\epsilon")
mu = OptaxAdamax.state("mu", 0, "first moment", latex="m")
nu = OptaxAdamax.state("nu", 0, "exponentially weighted infinity norm", latex="u")

OptaxAdamax.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
OptaxAdamax.assign(nu, maximum(abs(g) + eps, b2 * nu), "infinity norm")
upd = OptaxAdamax.let("upd", mu / (1 - b1**t) / nu, "scaled update", latex=r"\Delta")
OptaxAdamax.assign(w, w - lr * upd, "parameter update")

OptaxAdamax.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxAdamax.config("fast", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4)

OptaxAdamaxw = OptaxAdamax.derive(
    "OptaxAdamaxw",
    module="optax_adamaxw",
    title="AdamaxW (optax `adamaxw`)",
    summary="optax's Adamax with decoupled weight decay: weight_decay*w is added to the scaled update, before"
    " the learning rate (default 1e-4).",
    references=(
        "Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
        "optax.adamaxw: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adamaxw",
    ),
)
weight_decay = OptaxAdamaxw.hyper(
    "weight_decay", 1e-4, "[0, inf)", "decoupled weight decay, added to the update", latex=r"\lambda"
)
OptaxAdamaxw.replace(w, w - lr * (upd + weight_decay * w))
OptaxAdamaxw.config("default", learning_rate=0.003)
OptaxAdamaxw.config("fast", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, weight_decay=0.1)

RULES = [OptaxAdamax, OptaxAdamaxw]
