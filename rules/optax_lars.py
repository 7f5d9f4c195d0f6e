"""LARS as optax defines it (optax 0.2.8: ``lars = chain(add_decayed_weights(weight_decay),
scale_by_trust_ratio(trust_coefficient, eps), scale_by_learning_rate, trace(momentum, nesterov))``).

The gradient plus ``weight_decay*w`` is scaled, per tensor, by the trust ratio ``trust_coefficient*||w||/(||u||
+ eps)`` (1 where either norm is 0), then by the learning rate of the step, and a trace (momentum 0.9, starting
at 0) accumulates these scaled steps: ``trace <- lr*ratio*u + momentum*trace``, ``w <- w - trace`` (or ``w <- w
- (lr*ratio*u + momentum*trace)`` with ``nesterov``). The learning rate is inside the trace: a rate of 0 does
not stop the parameters while the trace is not 0. Left out: ``weight_decay_mask`` and ``trust_ratio_mask``
(every tensor is decayed and scaled, optax's default) and a ``weight_decay`` schedule (a number only here).
"""

from optforge.compiler.dsl import Eq, Rule, g, tensor_norm, w, where

RULE = Rule(
    "OptaxLars",
    module="optax_lars",
    title="LARS (optax `lars`)",
    summary="Layer-wise adaptive rate scaling: each tensor's step scaled by trust_coefficient*||w||/||g + wd*w||,"
    " accumulated with the learning rate in a momentum trace.",
    references=(
        "You et al., Large Batch Training of Convolutional Networks, 2017",
        "optax.lars: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.lars",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
weight_decay = RULE.hyper(
    "weight_decay",
    0.0,
    "[0, inf)",
    "weight decay, added to the gradient before the trust ratio",
    latex=r"\lambda",
)
trust_coefficient = RULE.hyper(
    "trust_coefficient", 0.001, "[0, inf)", "multiplies the trust ratio", latex=r"\eta_{\mathrm{trust}}"
)
eps = RULE.hyper("eps", 0.0, "[0, inf)", "added to the update's norm in the trust ratio", latex=r"\epsilon")
momentum = RULE.hyper("momentum", 0.9, "[0, inf)", "decay rate of the trace", latex=r"\mu")
nesterov = RULE.flag("nesterov", False, "Nesterov momentum")
trace = RULE.state("trace", 0, "trace of the scaled steps (momentum)", latex="b")

u = RULE.let("u", g + weight_decay * w, "gradient with weight decay", latex="u")
w_norm = RULE.let("w_norm", tensor_norm(w), "norm of the tensor", latex=r"\phi")
u_norm = RULE.let("u_norm", tensor_norm(u), "norm of its update", latex=r"\psi")
ratio = RULE.let(
    "ratio",
    where(Eq(w_norm, 0) | Eq(u_norm, 0), 1, trust_coefficient * w_norm / (u_norm + eps)),
    "trust ratio (1 if a norm is 0)",
    latex="r",
)
step = RULE.let("s", lr * (u * ratio), "scaled step", latex="s")
RULE.assign(trace, step + momentum * trace, "trace")
RULE.assign(w, w - trace, "momentum update", when=~nesterov)
RULE.assign(w, w - (step + momentum * trace), "Nesterov update", when=nesterov)

RULE.config("default", learning_rate=0.1)  # optax has no default learning rate
RULE.config(
    "nesterov_decay",
    learning_rate=0.5,
    weight_decay=0.01,
    trust_coefficient=0.01,
    eps=1e-3,
    momentum=0.8,
    nesterov=True,
)
