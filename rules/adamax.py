"""Adamax, as Keras 3 defines it (seed page 003): Adam with the infinity norm.

Keras adds epsilon to the norm, outside the bias correction:
``w <- w - lr*m / ((1 - beta_1^t) * (u + epsilon))``. torch.optim.Adamax puts it
inside the max instead (``u <- max(beta_2*u, |g| + eps)``); they agree when epsilon is 0.
"""

from optforge.compiler.dsl import Rule, g, maximum, t, w

RULE = Rule(
    "Adamax",
    title="Adamax (Keras 3 `Adamax`)",
    summary="A variant of Adam based on the infinity norm (Kingma and Ba, section 7.1).",
    references=(
        "Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, section 7.1",
        "Keras 3 `keras.optimizers.Adamax`: https://keras.io/api/optimizers/adamax/",
    ),
)
lr = RULE.learning_rate(0.001)
beta_1 = RULE.hyper("beta_1", 0.9, "[0, 1)", "exponential decay rate of the first moment")
beta_2 = RULE.hyper("beta_2", 0.999, "[0, 1]", "exponential decay rate of the weighted infinity norm")
epsilon = RULE.hyper("epsilon", 1e-7, "[0, inf)", "small constant for numerical stability")
m = RULE.state("m", 0, "first moment")
u = RULE.state("u", 0, "exponentially weighted infinity norm")

RULE.assign(m, m + (1 - beta_1) * (g - m), "first moment")
RULE.assign(u, maximum(beta_2 * u, abs(g)), "infinity norm")
RULE.assign(w, w - lr * m / ((1 - beta_1**t) * (u + epsilon)), "parameter update")

RULE.config("fast", learning_rate=0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-3)
RULE.config("eps_0", learning_rate=0.01, epsilon=0.0)
