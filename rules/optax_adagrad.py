"""Adagrad as optax defines it (optax 0.2.8: ``adagrad = chain(scale_by_rss, scale_by_learning_rate)``).

The sum of squared gradients starts at ``initial_accumulator_value`` (0.1) and is ``a <- a + g^2``; the update
is ``g/sqrt(a + eps)`` (optax's ``rsqrt(a + eps)``: ``eps``, 1e-7, inside the root, as Keras and unlike torch)
where ``a > 0``, and 0 where ``a`` is 0 (only possible with ``initial_accumulator_value = 0`` and gradients
that have been 0); ``w <- w - lr*update``. Nothing of ``optax.adagrad`` is left out.
"""

from optforge.compiler.dsl import Rule, g, sqrt, w, where

RULE = Rule(
    "OptaxAdagrad",
    module="optax_adagrad",
    title="Adagrad (optax `adagrad`)",
    summary="optax's Adagrad: the gradient divided by the root of the sum of its squares plus eps (eps inside"
    " the root), the sum starting at initial_accumulator_value; 0 where the sum is 0.",
    references=(
        "Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic Optimization, JMLR 2011",
        "optax.adagrad: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adagrad",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
initial_accumulator_value = RULE.hyper(
    "initial_accumulator_value", 0.1, "[0, inf)", "initial value of the sum of squares", latex=r"a_0"
)
eps = RULE.hyper(
    "eps", 1e-7, "[0, inf)", "added to the sum of squares inside the square root", latex=r"\epsilon"
)
acc = RULE.state("sum_of_squares", initial_accumulator_value, "sum of the squared gradients", latex="a")

RULE.assign(acc, g**2 + acc, "sum of squares")
RULE.assign(w, w - lr * where(acc > 0, g / sqrt(acc + eps), 0), "parameter update")

RULE.config("default", learning_rate=0.01)  # optax has no default learning rate
RULE.config("from_zero", learning_rate=0.05, initial_accumulator_value=0.0, eps=1e-4)
