"""RAdam as torch.optim defines it (torch 2.13, ``_single_tensor_radam``).

``maximize`` negates the gradient first. With ``weight_decay != 0`` the decay is L2, added to the gradient
(``g + weight_decay*w``), or with ``decoupled_weight_decay`` applied to the weights before the moments,
``w <- w*(1 - lr*weight_decay)``. The moments are Adam's, ``m <- m + (1 - beta1)*(g - m)`` and
``v <- beta2*v + (1 - beta2)*g^2``, and the first is bias-corrected, ``m_hat = m/(1 - beta1^t)``. The length
of the approximated simple moving average is ``rho_t = rho_inf - 2*t*beta2^t/(1 - beta2^t)`` with
``rho_inf = 2/(1 - beta2) - 1``. Where ``rho_t > 5`` the update is rectified and adaptive,
``w <- w - lr*m_hat*sqrt(1 - beta2^t)/(sqrt(v) + eps)*r`` with
``r = sqrt((rho_t - 4)*(rho_t - 2)*rho_inf/((rho_inf - 4)*(rho_inf - 2)*rho_t))`` (epsilon outside the root of
the raw ``v``); otherwise (the first steps) it is momentum SGD, ``w <- w - lr*m_hat``. torch's
``betas=(beta1, beta2)`` are two hyperparameters here.

Left out: torch's ``foreach`` (the same formulas), ``capturable``, ``differentiable`` and complex parameters.
"""

from optforge.compiler.dsl import Ne, Rule, g, sqrt, t, w, where

RULE = Rule(
    "TorchRAdam",
    module="torch_radam",
    title="RAdam (torch.optim `RAdam`)",
    summary="Rectified Adam: momentum SGD while the variance of the adaptive rate is intractable"
    " (rho_t <= 5), then Adam with a rectification factor; L2 or decoupled weight decay, and `maximize`.",
    references=(
        "Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020",
        "torch.optim.RAdam: https://pytorch.org/docs/stable/generated/torch.optim.RAdam.html",
    ),
)
lr = RULE.learning_rate(0.001)
beta1 = RULE.hyper(
    "beta1", 0.9, "[0, 1)", "decay rate of the first moment (torch's betas[0])", latex=r"\beta_1"
)
beta2 = RULE.hyper(
    "beta2", 0.999, "[0, 1)", "decay rate of the second moment (torch's betas[1])", latex=r"\beta_2"
)
eps = RULE.hyper("eps", 1e-8, "[0, inf)", "added to the root of the second moment", latex=r"\epsilon")
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "weight decay: L2 added to the gradient, or decoupled", latex=r"\lambda"
)
decoupled_weight_decay = RULE.flag(
    "decoupled_weight_decay", False, "decoupled weight decay, w <- w*(1 - lr*weight_decay)"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
m = RULE.state("exp_avg", 0, "first moment", latex="m")
v = RULE.state("exp_avg_sq", 0, "second moment", latex="v")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(
    w,
    w * (1 - lr * weight_decay),
    "decoupled weight decay",
    when=Ne(weight_decay, 0) & decoupled_weight_decay,
)
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0) & ~decoupled_weight_decay)
RULE.assign(m, m + (1 - beta1) * (g - m), "first moment")
RULE.assign(v, beta2 * v + (1 - beta2) * g**2, "second moment")
m_hat = RULE.let("m_hat", m / (1 - beta1**t), "bias correction", latex=r"\hat{m}")
rho_inf = RULE.let("rho_inf", 2 / (1 - beta2) - 1, "maximum length of the SMA", latex=r"\rho_\infty")
rho = RULE.let("rho", rho_inf - 2 * t * beta2**t / (1 - beta2**t), "length of the SMA", latex=r"\rho_t")
rect = RULE.let(
    "rect",
    sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)),
    "variance rectification",
    latex="r",
)
adaptive = RULE.let("adaptive", sqrt(1 - beta2**t) / (sqrt(v) + eps), "adaptive learning rate", latex="a")
RULE.assign(w, w - where(rho > 5, m_hat * lr * adaptive * rect, m_hat * lr), "parameter update")

RULE.config(
    "fast_decoupled_maximize",
    learning_rate=0.01,
    beta1=0.8,
    beta2=0.9,
    eps=1e-4,
    weight_decay=0.1,
    decoupled_weight_decay=True,
    maximize=True,
)
# the L2 decay (decoupled_weight_decay off) is another branch: one config for it
RULE.config("l2", weight_decay=0.05)
