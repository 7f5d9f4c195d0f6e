"""RAdam as optax defines it (optax 0.2.8: ``radam = chain(scale_by_radam, scale_by_learning_rate)``).

Adam's moments ``mu <- (1 - b1)*g + b1*mu``, ``nu <- (1 - b2)*g^2 + b2*nu`` from 0, both bias-corrected
(``mu_hat`` is Dozat's look-ahead with ``nesterov``, as in optax.adam). The length of the approximated simple
moving average is ``rho_t = rho_inf - 2*t*b2^t/(1 - b2^t)`` with ``rho_inf = 2/(1 - b2) - 1``. Where
``rho_t >= threshold`` (5 by default; a test of the step, the same for every parameter) the update is rectified,
``r*mu_hat/(sqrt(nu_hat + eps_root) + eps)`` with ``r = sqrt((rho_t - 4)*(rho_t - 2)*rho_inf/((rho_inf -
4)*(rho_inf - 2)*rho_t))``; below it, the update is ``mu_hat`` alone (no division: SGD with momentum for the
first steps, t <= 5 with the defaults). ``w <- w - lr*update``. Nothing of ``optax.radam`` is left out, but
``threshold`` is checked to be at least 4: below, ``r`` is the root of a negative number on the steps where
``threshold <= rho_t < 4`` (optax returns NaN there; the NumPy and torch modules' ``math.sqrt`` would raise).
"""

from optforge.compiler.dsl import Rule, g, sqrt, t, w, where

RULE = Rule(
    "OptaxRadam",
    module="optax_radam",
    title="RAdam (optax `radam`)",
    summary="Rectified Adam: the bias-corrected first moment alone while the variance of the adaptive rate is"
    " not tractable (rho_t < threshold), Adam's step scaled by the rectification r_t after.",
    references=(
        "Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020",
        "optax.radam: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.radam",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = RULE.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = RULE.hyper("b2", 0.999, "[0, 1)", "decay rate of the second moment", latex=r"\beta_2")
eps = RULE.hyper(
    "eps", 1e-8, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = RULE.hyper(
    "eps_root",
    0.0,
    "[0, inf)",
    "added to the denominator inside the square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
threshold = RULE.hyper(
    "threshold",
    5.0,
    "[4, inf)",
    "rectify (adaptive step) once rho_t reaches it (at least 4)",
    latex=r"\rho_{\min}",
)
nesterov = RULE.flag("nesterov", False, "Nesterov momentum (Dozat's NAdam look-ahead)")
mu = RULE.state("mu", 0, "first moment", latex="m")
nu = RULE.state("nu", 0, "second moment", latex="v")

RULE.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
RULE.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
rho_inf = RULE.let(
    "rho_inf", 2 / (1 - b2) - 1, "maximum length of the simple moving average", latex=r"\rho_\infty"
)
rho = RULE.let(
    "rho", rho_inf - 2 * t * b2**t / (1 - b2**t), "length of the simple moving average", latex=r"\rho"
)
mu_hat = RULE.let("mu_hat", mu / (1 - b1**t), "bias correction", latex=r"\hat{m}")
RULE.assign(
    mu_hat,
    b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t),
    "Nesterov look-ahead",
    when=nesterov,
)
nu_hat = RULE.let("nu_hat", nu / (1 - b2**t), "bias correction", latex=r"\hat{v}")
r = RULE.let(
    "r",
    sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)),
    "rectification",
    latex="r",
)
RULE.assign(
    w,
    w - lr * where(rho >= threshold, r * mu_hat / (sqrt(nu_hat + eps_root) + eps), mu_hat),
    "parameter update",
)

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config(
    "fast_nesterov", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, eps_root=1e-6, threshold=4.5, nesterov=True
)
