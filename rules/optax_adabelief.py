"""AdaBelief as optax defines it (optax 0.2.8: ``adabelief = chain(scale_by_belief, scale_by_learning_rate)``).

The first moment is Adam's, ``mu <- (1 - b1)*g + b1*mu``; the second is the moving average of the squared
prediction error ``g - mu`` (with the *new* ``mu``), and ``eps_root`` is added to it *in the state*, every
step: ``nu <- (1 - b2)*(g - mu)^2 + b2*nu + eps_root`` (so it accumulates, ``eps_root/(1 - b2)`` in the long
run). The update is ``mu_hat/(sqrt(nu/(1 - b2^t)) + eps)`` with ``mu_hat = mu/(1 - b1^t)``, or with
``nesterov`` Dozat's look-ahead ``b1*mu/(1 - b1^(t+1)) + (1 - b1)*g/(1 - b1^t)``; ``eps`` is outside the root.
``w <- w - lr*update``. Both epsilons default to 1e-16. Nothing of ``optax.adabelief`` is left out.
"""

from optforge.compiler.dsl import Rule, g, sqrt, t, w

RULE = Rule(
    "OptaxAdabelief",
    module="optax_adabelief",
    title="AdaBelief (optax `adabelief`)",
    summary="Adam whose second moment tracks the squared deviation of the gradient from its moving average"
    " (the belief); eps_root added to that moment every step, eps outside the root.",
    references=(
        "Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients,"
        " NeurIPS 2020",
        "optax.adabelief: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adabelief",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = RULE.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = RULE.hyper(
    "b2", 0.999, "[0, 1)", "decay rate of the second moment of the prediction error", latex=r"\beta_2"
)
eps = RULE.hyper(
    "eps", 1e-16, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = RULE.hyper(
    "eps_root",
    1e-16,
    "[0, inf)",
    "added to the second moment (kept in the state) every step",
    latex=r"\epsilon_{\mathrm{root}}",
)
nesterov = RULE.flag("nesterov", False, "Nesterov momentum (Dozat's NAdam look-ahead)")
mu = RULE.state("mu", 0, "first moment", latex="m")
nu = RULE.state("nu", 0, "second moment of the prediction error g - mu", latex="s")

RULE.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
RULE.assign(nu, (1 - b2) * (g - mu) ** 2 + b2 * nu + eps_root, "second moment of the prediction error")
mu_hat = RULE.let("mu_hat", mu / (1 - b1**t), "bias correction", latex=r"\hat{m}")
RULE.assign(
    mu_hat,
    b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t),
    "Nesterov look-ahead",
    when=nesterov,
)
nu_hat = RULE.let("nu_hat", nu / (1 - b2**t), "bias correction", latex=r"\hat{s}")
RULE.assign(w, w - lr * (mu_hat / (sqrt(nu_hat) + eps)), "parameter update")

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config("fast_nesterov", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-6, eps_root=1e-8, nesterov=True)
