"""Adadelta as torch.optim defines it (torch 2.13, ``_single_tensor_adadelta``).

``maximize`` negates the gradient and ``weight_decay`` adds ``weight_decay*w`` to it (L2); the step is
``delta = sqrt(acc_delta + eps)/sqrt(square_avg + eps)*g``, the running average of ``delta^2`` is taken
before the learning rate scales it, and ``w <- w - lr*delta`` with ``lr = 1.0`` by default.
"""

from optforge.compiler.dsl import Ne, Rule, g, sqrt, w, where

TorchAdadelta = Rule(
    "TorchAdadelta",
    module="torch_adadelta",
    title="Adadelta (torch.optim `Adadelta`)",
    summary="Steps scaled by the ratio of the running RMS of past steps to the running RMS of the gradients.",
    references=(
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, 2012",
        "torch.optim.Adadelta: https://pytorch.org/docs/stable/generated/torch.optim.Adadelta.html",
    ),
)
lr = TorchAdadelta.learning_rate(1.0, "coefficient that scales delta before it is applied")
rho = TorchAdadelta.hyper("rho", 0.9, "[0, 1]", "decay rate of the running averages", latex=r"\rho")
eps = TorchAdadelta.hyper("eps", 1e-6, "[0, inf)", "added inside both roots", latex=r"\epsilon")
weight_decay = TorchAdadelta.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
maximize = TorchAdadelta.flag("maximize", False, "maximize the objective (the gradient is negated first)")
square_avg = TorchAdadelta.state("square_avg", 0, "running average of g^2", latex="v")
acc_delta = TorchAdadelta.state("acc_delta", 0, "running average of delta^2", latex="u")

TorchAdadelta.assign(g, where(maximize, -g, g), "maximize")
TorchAdadelta.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
TorchAdadelta.assign(square_avg, rho * square_avg + (1 - rho) * g**2, "running mean square of g")
delta = TorchAdadelta.let(
    "delta", sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g, "step", latex=r"\Delta"
)
TorchAdadelta.assign(acc_delta, rho * acc_delta + (1 - rho) * delta**2, "running mean square of the steps")
TorchAdadelta.assign(w, w - lr * delta, "parameter update")

TorchAdadelta.config("decay_maximize", learning_rate=0.5, rho=0.5, eps=1e-4, weight_decay=0.1, maximize=True)

RULE = TorchAdadelta
