"""AMSGrad as optax defines it (optax 0.2.8: ``amsgrad = chain(scale_by_amsgrad, scale_by_learning_rate)``).

The moments are Adam's, ``mu <- (1 - b1)*g + b1*mu`` and ``nu <- (1 - b2)*g^2 + b2*nu``, both starting at 0.
The running maximum is taken of the *bias-corrected* second moment, ``nu_max <- max(nu_max, nu/(1 - b2^t))``
(torch's Adam(amsgrad=True) takes the maximum of the raw ``v`` and bias-corrects it afterwards: they differ),
and the update is ``mu/(1 - b1^t) / (sqrt(nu_max + eps_root) + eps)``, ``eps`` outside the root and
``eps_root`` inside; ``w <- w - lr*update``. ``bias_correction_mu`` and ``bias_correction_nu`` (both on by
default) switch each correction off. Left out: ``mu_dtype`` (the first moment is kept in the parameter's
dtype, optax's default).
"""

from optforge.compiler.dsl import Rule, g, maximum, sqrt, t, w

RULE = Rule(
    "OptaxAmsgrad",
    module="optax_amsgrad",
    title="AMSGrad (optax `amsgrad`)",
    summary="Adam that divides by the running maximum of the bias-corrected second moment (optax's AMSGrad),"
    " epsilon outside the root and eps_root inside.",
    references=(
        "Reddi et al., On the Convergence of Adam and Beyond, ICLR 2018",
        "optax.amsgrad: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.amsgrad",
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
bias_correction_mu = RULE.flag("bias_correction_mu", True, "divide the first moment by 1 - b1^t")
bias_correction_nu = RULE.flag(
    "bias_correction_nu", True, "divide the second moment by 1 - b2^t before the running maximum"
)
mu = RULE.state("mu", 0, "first moment", latex="m", dtype="mu_dtype")
nu = RULE.state("nu", 0, "second moment", latex="v")
nu_max = RULE.state("nu_max", 0, "running maximum of the (bias-corrected) second moment", latex=r"v^{\max}")

RULE.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
RULE.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
mu_hat = RULE.let("mu_hat", mu, "first moment in the update", latex=r"\hat{m}")
RULE.assign(mu_hat, mu / (1 - b1**t), "bias correction", when=bias_correction_mu)
nu_eff = RULE.let("nu_eff", nu, "second moment in the maximum", latex=r"\hat{v}")
RULE.assign(nu_eff, nu / (1 - b2**t), "bias correction", when=bias_correction_nu)
RULE.assign(nu_max, maximum(nu_max, nu_eff), "running maximum")
RULE.assign(w, w - lr * (mu_hat / (sqrt(nu_max + eps_root) + eps)), "parameter update")

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config(
    "uncorrected",
    learning_rate=0.01,
    b1=0.8,
    b2=0.9,
    eps=1e-4,
    eps_root=1e-6,
    bias_correction_mu=False,
    bias_correction_nu=False,
)
