"""RMSprop as torch.optim defines it (torch 2.13, ``_single_tensor_rmsprop``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``). The mean square is ``v <- alpha*v + (1 - alpha)*g^2`` (no bias correction) and the
denominator is ``sqrt(v) + eps``: epsilon outside the root. With ``centered`` a running mean of the gradient
``g_avg <- g_avg + (1 - alpha)*(g - g_avg)`` is kept too, and the denominator is ``sqrt(v - g_avg^2) + eps``.
Without momentum the update is ``w <- w - lr*g/denom``; with ``momentum > 0`` a buffer
``b <- momentum*b + g/denom`` (starting at 0) is kept and ``w <- w - lr*b``: the current learning rate
multiplies the whole buffer. The state starts at zeros, at the first step.

Left out: torch's ``capturable``, ``foreach`` (the multi-tensor path computes the same) and ``differentiable``,
and complex parameters. torch checks only ``alpha >= 0``; here ``alpha`` is in [0, 1].
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, sqrt, w, where

RULE = Rule(
    "TorchRMSprop",
    module="torch_rmsprop",
    title="RMSprop (torch.optim `RMSprop`)",
    summary="RMSprop with torch's epsilon placement (outside the root of the mean square), L2 weight decay added"
    " to the gradient, optional centering, a momentum buffer of the scaled gradient, and `maximize`.",
    references=(
        "Hinton, Neural Networks for Machine Learning, lecture 6e (2012)",
        "Graves, Generating Sequences With Recurrent Neural Networks, arXiv:1308.0850 (centered)",
        "torch.optim.RMSprop: https://pytorch.org/docs/stable/generated/torch.optim.RMSprop.html",
    ),
)
lr = RULE.learning_rate(0.01)
alpha = RULE.hyper("alpha", 0.99, "[0, 1]", "smoothing constant of the mean square", latex=r"\alpha")
eps = RULE.hyper("eps", 1e-8, "[0, inf)", "added to the root of the mean square", latex=r"\epsilon")
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
momentum = RULE.hyper("momentum", 0.0, "[0, inf)", "momentum of the scaled gradient (0: none)", latex=r"\mu")
centered = RULE.flag("centered", False, "divide by the root of the variance (mean square minus squared mean)")
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
v = RULE.state("square_avg", 0, "running mean of the squared gradient", latex="v")
g_avg = RULE.state("grad_avg", 0, "running mean of the gradient", exists_if=centered, latex=r"\bar{g}")
buf = RULE.state("momentum_buffer", 0, "momentum buffer of the scaled gradient", latex="b")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
RULE.assign(v, alpha * v + (1 - alpha) * g**2, "mean square")
RULE.assign(g_avg, g_avg + (1 - alpha) * (g - g_avg), "mean gradient", when=centered)
denom = RULE.let("denom", sqrt(v) + eps, "denominator", latex="d")
RULE.assign(denom, sqrt(v - g_avg**2) + eps, "centered denominator", only_if=centered)
RULE.assign(buf, momentum * buf + g / denom, "momentum buffer", when=Ne(momentum, 0))
RULE.assign(w, w - lr * buf, "momentum update", when=Ne(momentum, 0))
RULE.assign(w, w - lr * g / denom, "parameter update", when=Eq(momentum, 0))

RULE.config(
    "centered_momentum_maximize",
    learning_rate=0.001,
    alpha=0.9,
    eps=1e-4,
    weight_decay=0.1,
    momentum=0.9,
    centered=True,
    maximize=True,
)
