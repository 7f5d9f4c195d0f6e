"""Adadelta as torch.optim defines it (torch 2.13, ``_single_tensor_adadelta``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``). The mean square of the gradient is ``v <- rho*v + (1 - rho)*g^2``; the step is
``delta = sqrt(u + eps)/sqrt(v + eps)*g`` (epsilon inside both roots), read with the previous mean square of
the steps ``u``, which is then updated, ``u <- rho*u + (1 - rho)*delta^2``; the parameter moves by
``w <- w - lr*delta``. torch's learning rate defaults to 1.0 (Zeiler's Adadelta has none).

Left out: torch's ``foreach`` (the same formulas), ``capturable``, ``differentiable`` and complex parameters.
"""

from optforge.compiler.dsl import Ne, Rule, g, sqrt, w, where

RULE = Rule(
    "TorchAdadelta",
    module="torch_adadelta",
    title="Adadelta (torch.optim `Adadelta`)",
    summary="Adadelta: the step is the gradient scaled by the ratio of the roots of two running mean squares"
    " (of the steps and of the gradients), with a learning rate (default 1), L2 weight decay and `maximize`.",
    references=(
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701 (2012)",
        "torch.optim.Adadelta: https://pytorch.org/docs/stable/generated/torch.optim.Adadelta.html",
    ),
)
lr = RULE.learning_rate(1.0)
rho = RULE.hyper("rho", 0.9, "[0, 1]", "decay rate of the two running mean squares", latex=r"\rho")
eps = RULE.hyper("eps", 1e-6, "[0, inf)", "added inside both roots", latex=r"\epsilon")
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
v = RULE.state("square_avg", 0, "running mean of the squared gradient", latex="v")
u = RULE.state("acc_delta", 0, "running mean of the squared step", latex="u")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
RULE.assign(v, rho * v + (1 - rho) * g**2, "mean square of the gradient")
delta = RULE.let("delta", sqrt(u + eps) / sqrt(v + eps) * g, "step", latex=r"\Delta")
RULE.assign(u, rho * u + (1 - rho) * delta**2, "mean square of the step")
RULE.assign(w, w - lr * delta, "parameter update")

RULE.config("fast_maximize", learning_rate=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, maximize=True)
