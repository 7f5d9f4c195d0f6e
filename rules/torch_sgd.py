"""SGD as torch.optim defines it (torch 2.13, ``_single_tensor_sgd``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``d = g + weight_decay*w``). Without momentum the update is ``w <- w - lr*d``. With ``momentum != 0`` a
buffer is kept: at the first step it is the gradient itself, ``b = d`` (no dampening, no zero start), and
afterwards ``b <- momentum*b + (1 - dampening)*d``; the update is ``w <- w - lr*b``, or with ``nesterov``
``w <- w - lr*(d + momentum*b)``. The current learning rate multiplies the buffer (Keras's SGD keeps the
learning rate inside its velocity instead: the two differ when the rate changes, rules/sgd.py).

torch refuses ``nesterov=True`` unless ``momentum > 0`` and ``dampening == 0`` (a ``ValueError`` in its
constructor); this rule does not check that combination: with ``momentum == 0`` it ignores ``nesterov``, and
with a nonzero ``dampening`` it applies the Nesterov formula to the damped buffer. torch does not check the
range of ``dampening``; this rule takes any finite value.

Left out: torch's ``foreach`` and ``fused`` (the same formulas), ``differentiable``, a tensor learning rate
or weight decay, and sparse gradients.
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, t, w, where

RULE = Rule(
    "TorchSGD",
    module="torch_sgd",
    title="Gradient descent with momentum (torch.optim `SGD`)",
    summary="torch's SGD: L2 weight decay added to the gradient, a momentum buffer that starts at the first"
    " gradient and is scaled by the current learning rate, dampening, Nesterov momentum and `maximize`.",
    references=(
        "Sutskever et al., On the importance of initialization and momentum in deep learning, ICML 2013",
        "torch.optim.SGD: https://pytorch.org/docs/stable/generated/torch.optim.SGD.html",
    ),
)
lr = RULE.learning_rate(0.001)
momentum = RULE.hyper("momentum", 0.0, "[0, inf)", "momentum factor (0: no buffer)", latex=r"\mu")
dampening = RULE.hyper(
    "dampening",
    0.0,
    "(-inf, inf)",
    "the gradient enters the buffer scaled by 1 - dampening (from the second step)",
    latex=r"\tau",
)
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
nesterov = RULE.flag("nesterov", False, "Nesterov momentum (torch requires momentum > 0 and dampening 0)")
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
buf = RULE.state("momentum_buffer", 0, "momentum buffer (the first gradient at the first step)", latex="b")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
RULE.assign(
    buf,
    where(Eq(t, 1), g, momentum * buf + (1 - dampening) * g),
    "momentum buffer (the gradient at the first step)",
    when=Ne(momentum, 0),
)
RULE.assign(w, w - lr * (g + momentum * buf), "Nesterov update", when=Ne(momentum, 0) & nesterov)
RULE.assign(w, w - lr * buf, "momentum update", when=Ne(momentum, 0) & ~nesterov)
RULE.assign(w, w - lr * g, "gradient descent", when=Eq(momentum, 0))

# torch refuses nesterov with dampening: the dampened buffer and the Nesterov update need one config each
RULE.config(
    "momentum_dampening_maximize",
    learning_rate=0.01,
    momentum=0.9,
    dampening=0.3,
    weight_decay=0.1,
    maximize=True,
)
RULE.config("nesterov", learning_rate=0.01, momentum=0.8, weight_decay=0.05, nesterov=True)
