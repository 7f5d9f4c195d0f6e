"""Adagrad as torch.optim defines it (torch 2.13, ``_single_tensor_adagrad``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``). The sum of squared gradients starts at ``initial_accumulator_value`` (default 0,
where Keras starts at 0.1), ``s <- s + g^2``, and the update is ``w <- w - clr*g/(sqrt(s) + eps)``: epsilon
outside the root (Keras puts it inside), with the decayed rate ``clr = lr/(1 + (t - 1)*lr_decay)``.

Left out: torch's ``foreach`` and ``fused`` (the same formulas), ``differentiable``, sparse and complex
gradients.
"""

from optforge.compiler.dsl import Ne, Rule, g, sqrt, t, w, where

RULE = Rule(
    "TorchAdagrad",
    module="torch_adagrad",
    title="Adagrad (torch.optim `Adagrad`)",
    summary="torch's Adagrad: epsilon outside the root of the sum of squared gradients, an accumulator that"
    " starts at 0 by default, L2 weight decay added to the gradient, a learning-rate decay and `maximize`.",
    references=(
        "Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic Optimization, JMLR 2011",
        "torch.optim.Adagrad: https://pytorch.org/docs/stable/generated/torch.optim.Adagrad.html",
    ),
)
lr = RULE.learning_rate(0.01)
lr_decay = RULE.hyper(
    "lr_decay", 0.0, "[0, inf)", "learning-rate decay: the step is lr/(1 + (t - 1)*lr_decay)", latex=r"\delta"
)
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
initial_accumulator_value = RULE.hyper(
    "initial_accumulator_value",
    0.0,
    "[0, inf)",
    "starting value of the sum of squared gradients",
    latex=r"s_0",
)
eps = RULE.hyper("eps", 1e-10, "[0, inf)", "added to the root of the sum of squares", latex=r"\epsilon")
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
s = RULE.state("sum", initial_accumulator_value, "sum of squared gradients", latex="s")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
clr = RULE.let("clr", lr / (1 + (t - 1) * lr_decay), "decayed learning rate", latex=r"\eta_t")
RULE.assign(s, s + g**2, "sum of squared gradients")
RULE.assign(w, w - clr * g / (sqrt(s) + eps), "parameter update")

RULE.config(
    "decayed_maximize",
    learning_rate=0.05,
    lr_decay=0.1,
    weight_decay=0.1,
    initial_accumulator_value=0.2,
    eps=1e-6,
    maximize=True,
)
