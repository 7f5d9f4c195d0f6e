"""Adamax as torch.optim defines it (torch 2.13, ``_single_tensor_adamax``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``). The first moment is ``m <- m + (1 - beta1)*(g - m)`` (torch's ``lerp``); the
infinity norm is ``u <- max(beta2*u, |g| + eps)``: epsilon inside the max (Keras adds it to ``u`` outside the
max, rules/adamax.py), so ``u`` is never 0. The update is ``w <- w - lr/(1 - beta1^t)*m/u``: only the first
moment is bias-corrected. torch's ``betas=(beta1, beta2)`` are two hyperparameters here.

Left out: torch's ``foreach`` (the same formulas), ``capturable``, ``differentiable`` and complex parameters.
"""

from optforge.compiler.dsl import Ne, Rule, g, maximum, t, w, where

RULE = Rule(
    "TorchAdamax",
    module="torch_adamax",
    title="Adamax (torch.optim `Adamax`)",
    summary="torch's Adamax: Adam with the infinity norm, epsilon inside the max, L2 weight decay added to the"
    " gradient, and `maximize`.",
    references=(
        "Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, section 7.1",
        "torch.optim.Adamax: https://pytorch.org/docs/stable/generated/torch.optim.Adamax.html",
    ),
)
lr = RULE.learning_rate(0.002)
beta1 = RULE.hyper(
    "beta1", 0.9, "[0, 1)", "decay rate of the first moment (torch's betas[0])", latex=r"\beta_1"
)
beta2 = RULE.hyper(
    "beta2", 0.999, "[0, 1)", "decay rate of the infinity norm (torch's betas[1])", latex=r"\beta_2"
)
eps = RULE.hyper("eps", 1e-8, "[0, inf)", "added to |g| inside the max", latex=r"\epsilon")
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
m = RULE.state("exp_avg", 0, "first moment", latex="m")
u = RULE.state("exp_inf", 0, "exponentially weighted infinity norm", latex="u")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
RULE.assign(m, m + (1 - beta1) * (g - m), "first moment")
RULE.assign(u, maximum(beta2 * u, abs(g) + eps), "infinity norm")
RULE.assign(w, w - lr / (1 - beta1**t) * m / u, "parameter update")

RULE.config(
    "fast_maximize", learning_rate=0.01, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.1, maximize=True
)
