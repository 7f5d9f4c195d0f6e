"""signSGD as optax defines it (optax 0.2.8: ``sign_sgd = chain(scale_by_sign, scale_by_learning_rate)``).

The update is the sign of the gradient, ``w <- w - lr*sign(g)`` (``sign(0) = 0``: a zero gradient leaves the
parameter unchanged). No state and no hyperparameter but the learning rate; nothing is left out.
"""

from optforge.compiler.dsl import Rule, g, sign, w

RULE = Rule(
    "OptaxSignSgd",
    module="optax_sign_sgd",
    title="signSGD (optax `sign_sgd`)",
    summary="Gradient descent on the sign of the gradient: every coordinate moves by the learning rate. No state.",
    references=(
        "Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018",
        "optax.sign_sgd: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.sign_sgd",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
RULE.assign(w, w - lr * sign(g), "parameter update")

RULE.config("default", learning_rate=0.01)  # optax has no default learning rate
