"""AMSGrad as optax defines it (optax 0.2.8: ``amsgrad = chain(scale_by_amsgrad, scale_by_learning_rate)``).

Adam's moments, then the running maximum of the *bias-corrected* second moment,
``nu_max <- max(nu_max, nu/(1 - b2^t))``, divides the update: ``mu_hat/(sqrt(nu_max + eps_root) + eps)``.
torch.optim.Adam(amsgrad=True) (rule TorchAdam, flag ``amsgrad``) keeps the maximum of the raw second moment
and bias-corrects it afterwards, ``sqrt(max(v))/sqrt(1 - beta2^t)``: as ``1 - b2^t`` grows, an early
maximum weighs less there than here. ``bias_correction_mu`` and ``bias_correction_nu`` turn either
correction off.
"""

from optforge.compiler.dsl import Rule, g, maximum, sqrt, t, w, where

OptaxAmsgrad = Rule(
    "OptaxAmsgrad",
    module="optax_amsgrad",
    title="AMSGrad (optax `amsgrad`)",
    summary="Adam dividing by the running maximum of the bias-corrected second moment (optax's AMSGrad).",
    references=(
        "Reddi et al., On the Convergence of Adam and Beyond, ICLR 2018",
        "optax.amsgrad: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.amsgrad",
    ),
)
lr = OptaxAmsgrad.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = OptaxAmsgrad.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = OptaxAmsgrad.hyper("b2", 0.999, "[0, 1)", "decay rate of the second moment", latex=r"\beta_2")
eps = OptaxAmsgrad.hyper(
    "eps", 1e-8, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = OptaxAmsgrad.hyper(
    "eps_root",
    0.0,
    "[0, inf)",
    "added to the denominator inside the square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
bias_correction_mu = OptaxAmsgrad.flag("bias_correction_mu", True, "divide the first moment by 1 - b1^t")
bias_correction_nu = OptaxAmsgrad.flag("bias_correction_nu", True, "divide the second moment by 1 - b2^t")
mu = OptaxAmsgrad.state("mu", 0, "first moment", latex="m")
nu = OptaxAmsgrad.state("nu", 0, "second moment", latex="v")
nu_max = OptaxAmsgrad.state(
    "nu_max", 0, "running maximum of the (bias-corrected) second moment", latex=r"v^{\max}"
)

OptaxAmsgrad.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
OptaxAmsgrad.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
mu_hat = OptaxAmsgrad.let(
    "mu_hat", mu / where(bias_correction_mu, 1 - b1**t, 1), "bias correction", latex=r"\hat{m}"
)
nu_hat = OptaxAmsgrad.let(
    "nu_hat", nu / where(bias_correction_nu, 1 - b2**t, 1), "bias correction", latex=r"\hat{v}"
)
OptaxAmsgrad.assign(nu_max, maximum(nu_max, nu_hat), "running maximum")
OptaxAmsgrad.assign(w, w - lr * mu_hat / (sqrt(nu_max + eps_root) + eps), "parameter update")

OptaxAmsgrad.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxAmsgrad.config(
    "uncorrected_nu", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, eps_root=1e-6, bias_correction_nu=False
)

RULE = OptaxAmsgrad
