"""Rprop as torch.optim defines it (torch 2.13, ``_single_tensor_rprop``).

``maximize`` negates the gradient first. Each element has its own step size, which starts at the learning
rate: torch fills it with ``lr`` when it creates the state, at the first step, so the learning rate is read
only then (a schedule's later values change nothing), and here that is a first-step equation. At every step
the sign of ``g*prev`` (``prev`` the gradient kept from the previous step, 0 at the first) picks a factor:
``etaplus`` where it is positive, ``etaminus`` where negative, 1 where 0; the step size is multiplied by it
and clamped to ``[step_size_min, step_size_max]`` (at the first step too). Where the sign was negative the
gradient is set to 0, so that element does not move and the next step sees no sign change there. Then
``w <- w - sign(g)*step_size`` and ``prev <- g``. torch's ``etas=(etaminus, etaplus)`` and
``step_sizes=(step_size_min, step_size_max)`` are pairs of hyperparameters here.

torch checks ``0 < etaminus < 1 < etaplus`` and not the step sizes; here ``step_size_min`` is in
``[0, inf)`` and ``step_size_max`` in ``(0, inf)``. Left out: torch's ``foreach`` (the same formulas),
``capturable``, ``differentiable`` and complex parameters.
"""

from optforge.compiler.dsl import Eq, Rule, clip, g, sign, t, w, where

RULE = Rule(
    "TorchRprop",
    module="torch_rprop",
    title="Rprop (torch.optim `Rprop`)",
    summary="Resilient backpropagation: a step size per element, grown where the gradient keeps its sign and"
    " shrunk where it flips; the update is the sign of the gradient times the step size.",
    references=(
        "Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP"
        " Algorithm, IEEE ICNN 1993",
        "torch.optim.Rprop: https://pytorch.org/docs/stable/generated/torch.optim.Rprop.html",
    ),
)
lr = RULE.learning_rate(0.01, "initial step size of every element (read at the first step only)")
etaminus = RULE.hyper(
    "etaminus",
    0.5,
    "(0, 1)",
    "step-size factor where the gradient's sign flips (torch's etas[0])",
    latex=r"\eta^-",
)
etaplus = RULE.hyper(
    "etaplus",
    1.2,
    "(1, inf)",
    "step-size factor where the gradient keeps its sign (torch's etas[1])",
    latex=r"\eta^+",
)
step_size_min = RULE.hyper(
    "step_size_min", 1e-6, "[0, inf)", "smallest step size (torch's step_sizes[0])", latex=r"\Gamma_{\min}"
)
step_size_max = RULE.hyper(
    "step_size_max", 50.0, "(0, inf)", "largest step size (torch's step_sizes[1])", latex=r"\Gamma_{\max}"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
prev = RULE.state("prev", 0, "the previous step's gradient (0 where its sign flipped)", latex="p")
step_size = RULE.state(
    "step_size", 0, "step size per element (the learning rate at the first step)", latex=r"\Gamma"
)

RULE.assign(g, where(maximize, -g, g), "maximize")
s = RULE.let("s", sign(g * prev), "sign of the gradient times the previous one", latex="s")
factor = RULE.let("factor", where(s > 0, etaplus, where(s < 0, etaminus, 1)), "step-size factor", latex="f")
RULE.assign(
    step_size,
    clip(where(Eq(t, 1), lr, step_size) * factor, step_size_min, step_size_max),
    "step size (starts at the learning rate)",
)
RULE.assign(g, where(s < 0, 0, g), "no move where the sign flipped")
RULE.assign(w, w - sign(g) * step_size, "parameter update")
RULE.assign(prev, g, "kept for the next step")

RULE.config(
    "bounded_maximize",
    learning_rate=0.05,
    etaminus=0.3,
    etaplus=1.5,
    step_size_min=1e-3,
    step_size_max=0.1,
    maximize=True,
)
