"""Adan as optax defines it (optax 0.2.8: ``adan = chain(scale_by_adan(b1, b2, b3, eps, eps_root),
add_decayed_weights(weight_decay), scale_by_learning_rate(lr))``, Algorithm 1 of the paper).

Three moments, each optax's ``(1 - b)*x + b*moment``: of the gradient, of the difference of successive
gradients (0 at the first step, where there is no previous gradient), and of the square of the gradient
extrapolated by that difference, ``(g + (1 - b2)*diff)^2``. All three are bias-corrected; the update is
``(m_hat + (1 - b2)*v_hat)/(sqrt(n_hat + eps_root) + eps)``, to which ``weight_decay*w`` is added before the
learning rate scales it (decoupled, as optax.adamw). The previous gradient is kept as a fourth state
(optax's ``g``; here ``g_prev``, since ``g`` is the gradient; optax's ``n`` is ``nu``, since ``n`` counts the calls). Note optax's ``b2`` weighs the gradient
difference, unlike Adam's. Left out: ``mask``.
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, sqrt, t, w, where

OptaxAdan = Rule(
    "OptaxAdan",
    module="optax_adan",
    title="Adan (optax `adan`)",
    summary="Adaptive Nesterov momentum: moments of the gradient, of its change and of the extrapolated"
    " gradient's square, with decoupled weight decay; four states per parameter.",
    references=(
        "Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models, IEEE"
        " TPAMI 2024 (arXiv:2208.06677)",
        "optax.adan: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adan",
    ),
)
lr = OptaxAdan.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = OptaxAdan.hyper("b1", 0.98, "[0, 1)", "decay rate of the gradient's moment", latex=r"\beta_1")
b2 = OptaxAdan.hyper(
    "b2", 0.92, "[0, 1)", "decay rate of the moment of the gradient's change", latex=r"\beta_2"
)
b3 = OptaxAdan.hyper("b3", 0.99, "[0, 1)", "decay rate of the second moment", latex=r"\beta_3")
eps = OptaxAdan.hyper(
    "eps", 1e-8, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = OptaxAdan.hyper(
    "eps_root",
    1e-8,
    "[0, inf)",
    "added to the second moment inside the square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
weight_decay = OptaxAdan.hyper(
    "weight_decay", 0.0, "[0, inf)", "decoupled weight decay, added to the update", latex=r"\lambda"
)
m = OptaxAdan.state("m", 0, "moment of the gradient", latex="m")
v = OptaxAdan.state("v", 0, "moment of the gradient's change", latex="v")
n2 = OptaxAdan.state("nu", 0, "second moment of the extrapolated gradient", latex="n")
g_prev = OptaxAdan.state("g_prev", 0, "the previous gradient", latex=r"g_{\mathrm{prev}}")

diff = OptaxAdan.let("diff", where(Eq(t, 1), 0, g - g_prev), "change of the gradient", latex=r"\delta")
OptaxAdan.assign(m, (1 - b1) * g + b1 * m, "moment of the gradient")
OptaxAdan.assign(v, (1 - b2) * diff + b2 * v, "moment of the change")
OptaxAdan.assign(n2, (1 - b3) * (g + (1 - b2) * diff) ** 2 + b3 * n2, "second moment")
u = OptaxAdan.let(
    "u",
    (m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t)) / (sqrt(n2 / (1 - b3**t) + eps_root) + eps),
    "scaled update",
    latex="u",
)
OptaxAdan.assign(u, u + weight_decay * w, "decoupled weight decay", when=Ne(weight_decay, 0))
OptaxAdan.assign(w, w - lr * u, "parameter update")
OptaxAdan.assign(g_prev, g, "kept for the next step")

OptaxAdan.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxAdan.config(
    "decayed", learning_rate=0.01, b1=0.8, b2=0.7, b3=0.9, eps=1e-4, eps_root=1e-6, weight_decay=0.1
)

RULE = OptaxAdan
