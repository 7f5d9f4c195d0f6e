"""Fromage as optax defines it (optax 0.2.8: ``fromage = chain(scale_by_trust_ratio(min_norm),
scale_by_learning_rate(lr*mult), add_decayed_weights(mult - 1))`` with ``mult = 1/sqrt(1 + lr^2)``).

Each tensor's gradient is scaled by the trust ratio ``||w||/||g||``, each norm raised to ``min_norm`` (1e-6)
where it is at most that (optax's ``safe_norm``; with ``min_norm = 0`` a ratio with a zero norm is 1); the
step is ``w <- w - lr*mult*ratio*g + (mult - 1)*w``: the parameter shrinks by ``mult`` as it moves, so its norm
stays about constant. With a schedule, ``mult`` follows the learning rate of the step. Nothing of
``optax.fromage`` is left out.
"""

from optforge.compiler.dsl import Eq, Rule, g, sqrt, tensor_norm, w, where

RULE = Rule(
    "OptaxFromage",
    module="optax_fromage",
    title="Fromage (optax `fromage`)",
    summary="Frobenius matched gradient descent: each tensor moves by lr times its own norm, in the direction"
    " of the gradient, and shrinks by 1/sqrt(1 + lr^2). No state.",
    references=(
        "Bernstein et al., On the distance between two neural networks and the stability of learning,"
        " NeurIPS 2020",
        "optax.fromage: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.fromage",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
min_norm = RULE.hyper(
    "min_norm",
    1e-6,
    "[0, inf)",
    "norms at most this are raised to it in the trust ratio",
    latex=r"\nu_{\min}",
)

w_norm = RULE.let("w_norm", tensor_norm(w), "norm of the tensor", latex=r"\phi")
w_norm_safe = RULE.let(
    "w_norm_safe", where(w_norm <= min_norm, min_norm, w_norm), "at least min_norm", latex=r"\phi'"
)
g_norm = RULE.let("g_norm", tensor_norm(g), "norm of the gradient", latex=r"\psi")
g_norm_safe = RULE.let(
    "g_norm_safe", where(g_norm <= min_norm, min_norm, g_norm), "at least min_norm", latex=r"\psi'"
)
ratio = RULE.let(
    "ratio",
    where(Eq(w_norm_safe, 0) | Eq(g_norm_safe, 0), 1, w_norm_safe / g_norm_safe),
    "trust ratio (1 if a norm is 0)",
    latex="r",
)
mult = RULE.let("mult", 1 / sqrt(1 + lr**2), "shrink factor", latex=r"\kappa")
RULE.assign(w, w - lr * mult * (ratio * g) + (mult - 1) * w, "parameter update")

RULE.config("default", learning_rate=0.01)  # optax has no default learning rate
RULE.config("clipped", learning_rate=0.05, min_norm=0.5)
