"""RMSprop as torch.optim defines it (torch 2.13, ``_single_tensor_rmsprop``).

``maximize`` negates the gradient, ``weight_decay`` adds ``weight_decay*w`` to it (L2). The root is of the
running average of ``g^2`` (minus the squared running average of ``g`` when ``centered``), epsilon is added
outside it, and with ``momentum`` the buffer holds the scaled gradients and the learning rate multiplies
the buffer (``w <- w - lr*buf``: the current learning rate, as torch's schedulers set it). optax.rmsprop
differs: its epsilon is inside the root by default and its momentum traces updates that already hold the
learning rate.
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, sqrt, w, where

TorchRMSprop = Rule(
    "TorchRMSprop",
    module="torch_rmsprop",
    title="RMSprop (torch.optim `RMSprop`)",
    summary="Gradients divided by the root of their running mean square (epsilon outside the root),"
    " optionally centered, with torch's momentum buffer (learning rate outside it).",
    references=(
        "Hinton, Neural Networks for Machine Learning, lecture 6e (RMSprop)",
        "Graves, Generating Sequences With Recurrent Neural Networks, 2013 (centered)",
        "torch.optim.RMSprop: https://pytorch.org/docs/stable/generated/torch.optim.RMSprop.html",
    ),
)
lr = TorchRMSprop.learning_rate(0.01)
alpha = TorchRMSprop.hyper(
    "alpha", 0.99, "[0, inf)", "smoothing constant of the running averages", latex=r"\alpha"
)
eps = TorchRMSprop.hyper("eps", 1e-8, "[0, inf)", "added to the root (outside it)", latex=r"\epsilon")
weight_decay = TorchRMSprop.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
momentum = TorchRMSprop.hyper("momentum", 0.0, "[0, inf)", "momentum factor (0: none)", latex=r"\mu")
centered = TorchRMSprop.flag(
    "centered", False, "divide by the root of the estimated variance of the gradient"
)
maximize = TorchRMSprop.flag("maximize", False, "maximize the objective (the gradient is negated first)")
square_avg = TorchRMSprop.state("square_avg", 0, "running average of g^2", latex="v")
grad_avg = TorchRMSprop.state(
    "grad_avg", 0, "running average of g (centered)", exists_if=centered, latex=r"\bar{g}"
)
buf = TorchRMSprop.state("momentum_buffer", 0, "momentum buffer of the scaled gradients", latex="b")

TorchRMSprop.assign(g, where(maximize, -g, g), "maximize")
TorchRMSprop.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
TorchRMSprop.assign(square_avg, alpha * square_avg + (1 - alpha) * g**2, "running mean square")
TorchRMSprop.assign(grad_avg, grad_avg + (1 - alpha) * (g - grad_avg), "running mean", when=centered)
avg = TorchRMSprop.let("avg", sqrt(square_avg) + eps, "denominator", latex="d")
TorchRMSprop.assign(avg, sqrt(square_avg - grad_avg**2) + eps, "centered denominator", only_if=centered)
TorchRMSprop.assign(buf, momentum * buf + g / avg, "momentum buffer", when=Ne(momentum, 0))
TorchRMSprop.assign(w, w - lr * buf, "momentum update", when=Ne(momentum, 0))
TorchRMSprop.assign(w, w - lr * g / avg, "parameter update", when=Eq(momentum, 0))

TorchRMSprop.config(
    "centered_momentum_maximize",
    learning_rate=0.003,
    alpha=0.9,
    eps=1e-4,
    weight_decay=0.01,
    momentum=0.9,
    centered=True,
    maximize=True,
)

RULE = TorchRMSprop
