"""NovoGrad as optax defines it (seed page 001; REFERENCE_RULES.md section 1.1).

``optax.novograd`` = ``chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay), scale_by_learning_rate)``:
the first step sets ``nu = ||g||^2`` and ``mu = u`` (keyed on the step count, not on ``nu == 0``), epsilon
outside the square root and ``eps_root`` inside, weight decay added to the normalised gradient and carried
through the momentum, no ``(1 - b1)`` factor, the learning rate applied last (``-lr*mu``).
"""

from optforge.compiler.dsl import Eq, Rule, g, sqrt, t, tensor_sumsq, w, where

RULE = Rule(
    "OptaxNovoGrad",
    module="optax_novograd",
    title="NovoGrad (optax `novograd`)",
    summary="optax's NovoGrad: per-tensor second moment initialised from the first gradient, epsilon outside"
    " the root, eps_root inside.",
    references=(
        "optax.novograd: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.novograd",
        "Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep"
        " Networks, 2019",
        "Li et al., Jasper: An End-to-End Convolutional Neural Acoustic Model, 2019",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = RULE.hyper("b1", 0.9, "[0, 1]", "decay rate of the first moment", latex=r"\beta_1")
b2 = RULE.hyper("b2", 0.25, "[0, 1]", "decay rate of the per-tensor second moment", latex=r"\beta_2")
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
    "weight_decay", 0.0, "[0, inf)", "strength of the weight decay (through the momentum)"
)
nu = RULE.state("nu", 0, "per-tensor second moment of ||g||^2", scope="tensor", latex=r"\nu")
mu = RULE.state("mu", 0, "first moment of the normalised gradients", latex=r"\mu")

RULE.assign(nu, where(Eq(t, 1), tensor_sumsq(g), (1 - b2) * tensor_sumsq(g) + b2 * nu), "second moment")
u = RULE.let("u", g / (sqrt(nu + eps_root) + eps) + weight_decay * w, "normalised gradient with weight decay")
RULE.assign(mu, where(Eq(t, 1), u, b1 * mu + u), "first moment")
RULE.assign(w, w - lr * mu, "parameter update")

RULE.config("default", learning_rate=0.003)  # optax has no default learning rate
RULE.config("eps_root_wd", learning_rate=0.01, eps_root=1e-4, weight_decay=0.05, b2=0.9)
