"""ASGD (averaged SGD) as torch.optim defines it (torch 2.13, ``_single_tensor_asgd``).

``maximize`` negates the gradient first; ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``). The step size ``eta`` and the averaging rate ``mu`` are functions of the step that
torch keeps in 0-d float32 tensors (its default scalar dtype), each computed at the end of a step for the
next one: ``eta`` starts at the learning rate (rounded to float32) and after step ``t`` becomes
``float32(lr/(1 + lambd*lr*t)^alpha)`` with that step's ``lr`` (so with a schedule, step ``t`` uses step
``t - 1``'s rate); ``mu`` starts at 1 and after step ``t`` becomes ``float32(1/max(1, t - t0))``. Each step
decays and then moves the weights, ``w <- w*(1 - lambd*eta)`` then ``w <- w - eta*g``, and updates the average
of the iterates ``ax``: ``ax <- w`` while ``mu == 1`` (until step ``t0 + 2``), else
``ax <- ax + (w - ax)*mu``.

torch keeps ``ax`` in its state and never writes it into the parameters; here ``finalize_variable_values``
copies it in (the averaged iterate is what averaged SGD returns). torch checks none of ``lambd``, ``alpha``,
``t0``; here each is in ``[0, inf)``. Left out: torch's ``foreach`` (the same formulas), ``capturable``
(``eta`` and ``mu`` then on the device), ``differentiable`` and complex parameters, and a float64 default
dtype (under ``torch.set_default_dtype(torch.float64)`` torch does not round ``eta`` and ``mu``).
"""

from optforge.compiler.dsl import Eq, Ne, Rule, float32, g, maximum, t, w, where

RULE = Rule(
    "TorchASGD",
    module="torch_asgd",
    title="Averaged SGD (torch.optim `ASGD`)",
    summary="SGD with a decaying step size lr/(1 + lambd*lr*t)^alpha and weight decay lambd*eta, keeping a"
    " running average of the iterates from step t0 on (Polyak-Juditsky averaging).",
    references=(
        "Polyak and Juditsky, Acceleration of Stochastic Approximation by Averaging, SIAM J. Control Optim."
        " 30(4), 1992",
        "torch.optim.ASGD: https://pytorch.org/docs/stable/generated/torch.optim.ASGD.html",
    ),
)
lr = RULE.learning_rate(
    0.01,
    "base step size: the next step size is lr/(1 + lambd*lr*t)^alpha (a float, or a schedule step -> lr)",
    latex=r"\gamma",
)
lambd = RULE.hyper(
    "lambd", 1e-4, "[0, inf)", "decay term: of the step size and of the weights", latex=r"\lambda"
)
alpha = RULE.hyper("alpha", 0.75, "[0, inf)", "power of the step-size decay", latex=r"\alpha")
t0 = RULE.hyper("t0", 1e6, "[0, inf)", "the step from which the iterates are averaged", latex="t_0")
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda_{\mathrm{wd}}"
)
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
eta_next = RULE.state(
    "eta",
    0,
    "step size for the next step (float32), computed from this step's learning rate",
    scope="global",
    latex=r"\eta'",
)
ax = RULE.state("ax", 0, "running average of the iterates", latex=r"\bar{w}")

RULE.assign(g, where(maximize, -g, g), "maximize")
RULE.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
eta = RULE.let(
    "eta_t", where(Eq(t, 1), float32(lr), eta_next), "step size (the learning rate at first)", latex=r"\eta_t"
)
mu = RULE.let(
    "mu", where(Eq(t, 1), 1, float32(1 / maximum(1, t - 1 - t0))), "averaging rate (float32)", latex=r"\mu_t"
)
RULE.assign(w, w * (1 - lambd * eta), "decay")
RULE.assign(w, w - eta * g, "gradient step")
RULE.assign(ax, where(Eq(mu, 1), w, ax + (w - ax) * mu), "average of the iterates")
RULE.assign(eta_next, float32(lr / (1 + lambd * lr * t) ** alpha), "next step size")
RULE.finalizer(ax, "the average of the iterates")

RULE.config(
    "averaged_maximize", learning_rate=0.05, lambd=0.01, alpha=0.5, t0=10.0, weight_decay=0.1, maximize=True
)
