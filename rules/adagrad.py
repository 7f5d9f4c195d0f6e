"""Adagrad, as Keras 3 defines it (seed page 003 lists it beside Adamax).

Keras starts the accumulator at 0.1 and puts epsilon inside the square root;
torch.optim.Adagrad starts at 0 and puts eps outside.
"""

from optforge.compiler.dsl import Rule, g, sqrt, w

RULE = Rule(
    "Adagrad",
    title="Adagrad (Keras 3 `Adagrad`)",
    summary="Per-parameter learning rates scaled by the root of the sum of all past squared gradients.",
    references=(
        "Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic Optimization, JMLR 2011",
        "Keras 3 `keras.optimizers.Adagrad`: https://keras.io/api/optimizers/adagrad/",
    ),
)
lr = RULE.learning_rate(0.001)
initial_accumulator_value = RULE.hyper(
    "initial_accumulator_value", 0.1, "[0, inf)", "starting value of the accumulators", latex=r"a_0"
)
epsilon = RULE.hyper("epsilon", 1e-7, "[0, inf)", "small constant for numerical stability")
accumulator = RULE.state("accumulator", initial_accumulator_value, "sum of squared gradients", latex="a")

RULE.assign(accumulator, accumulator + g**2, "sum of squared gradients")
RULE.assign(w, w - lr * g / sqrt(accumulator + epsilon), "parameter update")

RULE.config("large", learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3)
RULE.config("eps_0", learning_rate=0.05, epsilon=0.0)
