"""LAMB as optax defines it (optax 0.2.8: ``lamb = chain(scale_by_adam(b1, b2, eps, eps_root),
add_decayed_weights(weight_decay), scale_by_trust_ratio(), scale_by_learning_rate)``).

Adam's step ``u = mu_hat/(sqrt(nu_hat + eps_root) + eps)`` (moments from 0, both bias-corrected, ``eps``
outside the root; 1e-6 by default), plus ``weight_decay*w``; then each tensor's update is scaled by its trust
ratio ``||w||/||u + weight_decay*w||`` (Frobenius norms of the whole tensor, before the update; 1 where either
norm is 0: a zero tensor, or a zero update, is not rescaled); ``w <- w - lr*ratio*(u + weight_decay*w)``.
``scale_by_trust_ratio`` runs with its defaults (``min_norm = 0``, ``trust_coefficient = 1``, ``eps = 0``),
which ``optax.lamb`` does not expose. Left out: ``mask`` and a ``weight_decay`` schedule (a number only here).
"""

from optforge.compiler.dsl import Eq, Rule, g, sqrt, t, tensor_norm, w, where

RULE = Rule(
    "OptaxLamb",
    module="optax_lamb",
    title="LAMB (optax `lamb`)",
    summary="Adam's step plus decoupled weight decay, rescaled per tensor by the trust ratio ||w||/||update||"
    " (layer-wise adaptation for large batches).",
    references=(
        "You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes, ICLR 2020",
        "optax.lamb: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.lamb",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = RULE.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = RULE.hyper("b2", 0.999, "[0, 1)", "decay rate of the second moment", latex=r"\beta_2")
eps = RULE.hyper(
    "eps", 1e-6, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = RULE.hyper(
    "eps_root",
    0.0,
    "[0, inf)",
    "added to the denominator inside the square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
weight_decay = RULE.hyper(
    "weight_decay",
    0.0,
    "[0, inf)",
    "decoupled weight decay, added to the update before the trust ratio",
    latex=r"\lambda",
)
mu = RULE.state("mu", 0, "first moment", latex="m")
nu = RULE.state("nu", 0, "second moment", latex="v")

RULE.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
RULE.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
mu_hat = RULE.let("mu_hat", mu / (1 - b1**t), "bias correction", latex=r"\hat{m}")
nu_hat = RULE.let("nu_hat", nu / (1 - b2**t), "bias correction", latex=r"\hat{v}")
u = RULE.let(
    "u", mu_hat / (sqrt(nu_hat + eps_root) + eps) + weight_decay * w, "Adam step with weight decay", latex="u"
)
w_norm = RULE.let("w_norm", tensor_norm(w), "norm of the tensor", latex=r"\phi")
u_norm = RULE.let("u_norm", tensor_norm(u), "norm of its update", latex=r"\psi")
ratio = RULE.let(
    "ratio",
    where(Eq(w_norm, 0) | Eq(u_norm, 0), 1, w_norm / u_norm),
    "trust ratio (1 if a norm is 0)",
    latex="r",
)
RULE.assign(w, w - lr * (u * ratio), "parameter update")

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config("fast_decay", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, eps_root=1e-6, weight_decay=0.1)
