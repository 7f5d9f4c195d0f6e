"""Lion as optax defines it (optax 0.2.8: ``lion = chain(scale_by_lion, add_decayed_weights, scale_by_learning_rate)``).

The update is the sign of an interpolation of the gradient and the momentum, ``sign((1 - b1)*g + b1*mu)``,
computed before the momentum is updated with the other rate ``b2``; ``weight_decay*w`` is added to the
update before the learning rate scales it (decoupled; default 1e-3), ``w <- w - lr*(sign(...) +
weight_decay*w)``. torch.optim has no Lion.
"""

from optforge.compiler.dsl import Rule, g, sign, w

OptaxLion = Rule(
    "OptaxLion",
    module="optax_lion",
    title="Lion (optax `lion`)",
    summary="The sign of an interpolated momentum (EvoLved Sign Momentum), with decoupled weight decay:"
    " one state per parameter.",
    references=(
        "Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023",
        "optax.lion: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.lion",
    ),
)
lr = OptaxLion.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = OptaxLion.hyper(
    "b1", 0.9, "[0, 1]", "rate of the interpolation that the update takes the sign of", latex=r"\beta_1"
)
b2 = OptaxLion.hyper("b2", 0.99, "[0, 1]", "decay rate of the momentum", latex=r"\beta_2")
weight_decay = OptaxLion.hyper(
    "weight_decay", 1e-3, "[0, inf)", "decoupled weight decay, added to the update", latex=r"\lambda"
)
mu = OptaxLion.state("mu", 0, "momentum", latex="m", dtype="mu_dtype")

c = OptaxLion.let("c", sign((1 - b1) * g + b1 * mu), "sign of the interpolation", latex="c")
OptaxLion.assign(mu, (1 - b2) * g + b2 * mu, "momentum")
OptaxLion.assign(w, w - lr * (c + weight_decay * w), "parameter update")

OptaxLion.config("default", learning_rate=0.0003)  # optax has no default learning rate
OptaxLion.config("strong", learning_rate=0.001, b1=0.5, b2=0.9, weight_decay=0.1)

RULE = OptaxLion
