"""SGD with Polyak's step size as optax defines it (optax 0.2.8: ``polyak_sgd = chain(sgd(learning_rate=
scaling), scale_by_polyak(max_learning_rate, f_min, eps, variant))``).

The step reads the objective's value ``f`` at the current parameters (``loss``: optax's ``value=``, torch's
``step(closure)``). The gradient scaled by the rate (optax's ``scaling``, a number or a schedule) is ``u``;
its squared norm over every tensor ``||u||^2``; the step size ``min((f - f_min) / (||u||^2 + eps),
max_learning_rate)``, or 0 where ``||u||^2 + eps`` is at most float64's machine epsilon (optax's test,
``jnp.finfo(float).eps``); the update ``w <- w - step * u``. ``variant="sps+"`` takes the positive part of
``f - f_min`` (Garrigos et al. 2023).

Differences from optax: the rate is named ``learning_rate`` here (optax's ``scaling``), as in every rule.
"""

from optforge.compiler.dsl import Rule, g, global_sum, loss, maximum, minimum, w, where

RULE = Rule(
    "OptaxPolyakSgd",
    module="optax_polyak_sgd",
    title="SGD with Polyak's step size (optax `polyak_sgd`)",
    summary="Gradient descent whose step size is the objective's gap to its minimum over the squared norm of"
    " the gradients (Polyak's), capped at max_learning_rate; the step reads the objective's value.",
    references=(
        "Loizou, Vaswani, Laradji and Lacoste-Julien, Stochastic Polyak Step-size for SGD, AISTATS 2021,"
        " https://arxiv.org/abs/2002.10542",
        "Garrigos, Gower and Schaipp, Function value learning: Adaptive learning rates based on the Polyak"
        " stepsize and function splitting in ERM, 2023, https://arxiv.org/abs/2307.14528",
        "optax.polyak_sgd: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.polyak_sgd",
    ),
)
lr = RULE.learning_rate(1.0, "optax's scaling: a factor of the gradient, fixed or a schedule step -> lr")
max_lr = RULE.hyper("max_learning_rate", 1.0, "[0, inf)", "the largest step size", latex=r"\gamma_{\max}")
f_min = RULE.hyper("f_min", 0.0, "(-inf, inf)", "a lower bound of the objective", latex=r"f^\star")
eps = RULE.hyper("eps", 0.0, "[0, inf)", "added to the squared norm", latex=r"\epsilon")
variant = RULE.choice(
    "variant", ("sps", "sps+"), "sps", "'sps+' takes the positive part of the gap f - f_min"
)

u = RULE.let("u", lr * g, "the scaled gradient", latex="u")
norm2 = RULE.let("norm2", global_sum(u**2), "its squared norm over every tensor", latex="s")
gap = RULE.let(
    "gap",
    where(variant == "sps+", maximum(loss - f_min, 0), loss - f_min),
    "the gap to the minimum",
    latex=r"\Delta",
)
step_size = RULE.let(
    "step_size",
    where(norm2 + eps <= 2.220446049250313e-16, 0, minimum(gap / (norm2 + eps), max_lr)),
    "Polyak's step size (0 where the norm is at most float64's machine epsilon)",
    latex=r"\gamma",
)
RULE.assign(w, w - step_size * u, "parameter update")

RULE.config("default")
RULE.config("positive", variant="sps+", f_min=0.5, eps=1e-3, max_learning_rate=0.5, learning_rate=0.5)
