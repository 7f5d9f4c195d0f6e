"""NAdam as torch.optim defines it (torch 2.13, ``_single_tensor_nadam``).

``maximize`` negates the gradient first. With ``weight_decay != 0`` the decay is L2, added to the gradient
(``g + weight_decay*w``), or with ``decoupled_weight_decay`` (NAdamW) applied to the weights before the
moments, ``w <- w*(1 - lr*weight_decay)``. The momentum schedule is
``mu_t = beta1*(1 - 0.5*0.96^(t*momentum_decay))`` (Keras's Nadam is ``momentum_decay = 1``,
rules/nadam.py), and ``mu_product`` is the running product ``mu_1*...*mu_t``. torch keeps that product in a
0-d float32 tensor (its default scalar dtype), multiplying it by the float32 rounding of ``mu_t``: this rule
rounds it the same way (``float32``), as one value per step (torch keeps one per parameter, all equal).
The moments are ``m <- m + (1 - beta1)*(g - m)`` and ``v <- beta2*v + (1 - beta2)*g^2``; the denominator is
``sqrt(v/(1 - beta2^t)) + eps`` (epsilon outside the root), and the update is two steps,
``w <- w - lr*(1 - mu_t)/(1 - mu_product)*g/denom - lr*mu_{t+1}/(1 - mu_product*mu_{t+1})*m/denom``, where the
coefficients read the float32 product in float64. torch's ``betas=(beta1, beta2)`` are two hyperparameters.

Left out: torch's ``foreach`` (which divides ``sqrt(v)/sqrt(1 - beta2^t)``), ``capturable`` (the product
then lives on the device), ``differentiable``, complex parameters, and a float64 default dtype (under
``torch.set_default_dtype(torch.float64)`` torch keeps the product unrounded).
"""

from optforge.compiler.dsl import Ne, Rule, float32, g, sqrt, t, w, where

RULE = Rule(
    "TorchNAdam",
    module="torch_nadam",
    title="NAdam (torch.optim `NAdam`)",
    summary="Adam with Nesterov momentum and torch's momentum schedule 0.96^(t*momentum_decay), a float32"
    " product of that schedule, L2 or decoupled weight decay, and `maximize`.",
    references=(
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop",
        "Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019 (decoupled_weight_decay)",
        "torch.optim.NAdam: https://pytorch.org/docs/stable/generated/torch.optim.NAdam.html",
    ),
)
lr = RULE.learning_rate(0.002)
beta1 = RULE.hyper(
    "beta1", 0.9, "[0, 1)", "decay rate of the first moment (torch's betas[0])", latex=r"\beta_1"
)
beta2 = RULE.hyper(
    "beta2", 0.999, "[0, 1)", "decay rate of the second moment (torch's betas[1])", latex=r"\beta_2"
)
eps = RULE.hyper(
    "eps", 1e-8, "[0, inf)", "added to the root of the bias-corrected second moment", latex=r"\epsilon"
)
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "weight decay: L2 added to the gradient, or decoupled", latex=r"\lambda"
)
momentum_decay = RULE.hyper(
    "momentum_decay",
    0.004,
    "[0, inf)",
    "momentum decay: mu_t = beta1*(1 - 0.5*0.96^(t*momentum_decay))",
    latex=r"\psi",
)
decoupled_weight_decay = RULE.flag(
    "decoupled_weight_decay", False, "decoupled weight decay, w <- w*(1 - lr*weight_decay) (NAdamW)"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
mu_product = RULE.state(
    "mu_product", 1, "product of the momentum schedule mu_1 ... mu_t (float32)", scope="global", latex=r"\Pi"
)
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
mu = RULE.let("mu", beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)), "momentum schedule", latex=r"\mu_t")
mu_next = RULE.let(
    "mu_next", beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay)), "next momentum", latex=r"\mu_{t+1}"
)
RULE.assign(mu_product, float32(mu_product * float32(mu)), "product of the schedule, in float32")
RULE.assign(m, m + (1 - beta1) * (g - m), "first moment")
RULE.assign(v, beta2 * v + (1 - beta2) * g**2, "second moment")
denom = RULE.let("denom", sqrt(v / (1 - beta2**t)) + eps, "denominator", latex="d")
RULE.assign(
    w,
    w - lr * (1 - mu) / (1 - mu_product) * g / denom - lr * mu_next / (1 - mu_product * mu_next) * m / denom,
    "parameter update",
)

RULE.config(
    "fast_decoupled_maximize",
    learning_rate=0.01,
    beta1=0.8,
    beta2=0.9,
    eps=1e-4,
    weight_decay=0.1,
    momentum_decay=0.05,
    decoupled_weight_decay=True,
    maximize=True,
)
# the L2 decay (decoupled_weight_decay off) is another branch: one config for it
RULE.config("l2", weight_decay=0.05)
