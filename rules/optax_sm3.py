"""SM3 as optax defines it (optax 0.2.8: ``sm3 = chain(scale_by_sm3(momentum), scale(-learning_rate))``,
``scale_by_sm3`` with ``b2 = 1`` and ``eps = 1e-8``).

SM3 (Anil et al., 2019) keeps Adagrad's sum of squared gradients not per element but per slice of the
tensor: for each axis ``r``, one value per index along it (the cover of the tensor by its slices), so an
``m x n`` matrix keeps ``m + n`` values. Each step, an element's accumulator is its squared gradient plus
the smallest of the values of the slices through it (``cover_min``); the gradient is divided by its root
(``g / sqrt(accumulator + 1e-8)``, 0 where the accumulator is 0), averaged into ``nu`` with weight
``1 - momentum``, and each slice keeps the largest accumulator over its elements (``cover_max``): SM3-II.
A vector's cover is the vector itself (Adagrad's accumulator).

Differences from optax: optax fails on a 0-d tensor (its ``scale_by_sm3`` indexes the empty list of the
scalar's axes); here a 0-d tensor is covered by itself, one value, as a vector of length 1 is. Every
tensor keeps ``nu`` in full, as optax does (with ``momentum=0`` too).
"""

from optforge.compiler.dsl import Rule, cover_max, cover_min, g, w, where

RULE = Rule(
    "OptaxSm3",
    module="optax_sm3",
    title="SM3 (optax `sm3`)",
    summary="Adagrad's accumulator kept per slice of each tensor (m + n values for an m x n matrix): each"
    " element's is the least of the slices through it plus its squared gradient; a momentum of the scaled"
    " gradient.",
    references=(
        "Anil, Gupta, Koren and Singer, Memory-Efficient Adaptive Optimization, NeurIPS 2019,"
        " https://arxiv.org/abs/1901.11150",
        "optax.sm3: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.sm3",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
momentum = RULE.hyper("momentum", 0.9, "[0, 1]", "decay of the moving average of the update", latex=r"\beta")
mu = RULE.state(
    "mu", 0, "largest accumulator of each slice of the tensor (one vector per axis)", latex=r"\mu"
)
nu = RULE.state("nu", 0, "moving average of the scaled gradient", latex=r"\nu")
eps = 1e-8  # optax's scale_by_sm3 default, which optax.sm3 does not expose

accumulator = RULE.let(
    "accumulator",
    g**2 + cover_min(mu),
    "squared gradient plus the least slice through the element",
    latex="a",
)
RULE.assign(
    nu,
    (1 - momentum) * (g * where(accumulator > 0, (accumulator + eps) ** -0.5, 0)) + momentum * nu,
    "moving average of the scaled gradient",
)
RULE.assign(mu, cover_max(accumulator), "each slice's largest accumulator")
RULE.assign(w, w - lr * nu, "parameter update")

RULE.config("default", learning_rate=0.1)  # optax has no default learning rate
RULE.config("no_momentum", learning_rate=0.05, momentum=0.0)
