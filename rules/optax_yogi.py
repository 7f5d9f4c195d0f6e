"""Yogi as optax defines it (optax 0.2.8: ``yogi = chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate)``).

Both moments start at ``initial_accumulator_value = 1e-6`` (``scale_by_yogi``'s default; ``optax.yogi`` does
not expose it, so it is a constant here, as is ``eps_root = 0``). The first moment is Adam's,
``mu <- (1 - b1)*g + b1*mu``; the second moves towards ``g^2`` by a step that does not depend on its own
size: ``nu <- nu - (1 - b2)*sign(nu - g^2)*g^2``. Both are bias-corrected as in Adam (``1 - b^t``, although
they do not start at 0), and the update is ``mu_hat/(sqrt(nu_hat) + eps)`` (``eps`` outside the root, 1e-3 by
default); ``w <- w - lr*update``.
"""

from optforge.compiler.dsl import Rule, g, sign, sqrt, t, w

INITIAL_ACCUMULATOR_VALUE = 1e-6  # optax.scale_by_yogi's default, not a keyword of optax.yogi

RULE = Rule(
    "OptaxYogi",
    module="optax_yogi",
    title="Yogi (optax `yogi`)",
    summary="Adam whose second moment moves additively, by (1 - b2)*g^2 towards g^2 (the sign of the"
    " difference), both moments starting at 1e-6.",
    references=(
        "Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018",
        "optax.yogi: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.yogi",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = RULE.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = RULE.hyper("b2", 0.999, "[0, 1)", "rate of the additive change of the second moment", latex=r"\beta_2")
eps = RULE.hyper(
    "eps", 1e-3, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
mu = RULE.state("mu", INITIAL_ACCUMULATOR_VALUE, "first moment", latex="m")
nu = RULE.state("nu", INITIAL_ACCUMULATOR_VALUE, "second moment", latex="v")

RULE.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
RULE.assign(nu, nu - (1 - b2) * sign(nu - g**2) * g**2, "second moment (additive)")
mu_hat = RULE.let("mu_hat", mu / (1 - b1**t), "bias correction", latex=r"\hat{m}")
nu_hat = RULE.let("nu_hat", nu / (1 - b2**t), "bias correction", latex=r"\hat{v}")
RULE.assign(w, w - lr * (mu_hat / (sqrt(nu_hat) + eps)), "parameter update")

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config("fast", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4)
