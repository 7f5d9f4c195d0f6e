"""SGD with momentum and Nesterov momentum, as Keras 3 defines it (seed page 002).

Keras bakes the learning rate into the velocity (``v <- mu*v - lr*g``), which
differs from torch.optim.SGD (``b <- mu*b + g``, ``w <- w - lr*b``) as soon as
the learning rate changes between steps.
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, w

RULE = Rule(
    "SGD",
    title="Gradient descent with momentum (Keras 3 `SGD`)",
    summary="Plain gradient descent when `momentum` is 0; otherwise a velocity with the learning rate inside it,"
    " optionally with Nesterov momentum. No velocity is stored when `momentum` is 0.",
    references=(
        "Keras 3 `keras.optimizers.SGD`: https://keras.io/api/optimizers/sgd/",
        "Sutskever et al., On the importance of initialization and momentum in deep learning, ICML 2013",
    ),
)
lr = RULE.learning_rate(0.01)
momentum = RULE.hyper(
    "momentum",
    0.0,
    "[0, 1]",
    "accelerates descent in the relevant direction and dampens oscillations; 0 is vanilla gradient descent",
    latex=r"\mu",
)
nesterov = RULE.flag("nesterov", False, "whether to apply Nesterov momentum")
velocity = RULE.state("velocity", 0, "velocity, with the learning rate inside", latex="v")

RULE.assign(w, w - lr * g, "gradient descent", when=Eq(momentum, 0))
RULE.assign(velocity, momentum * velocity - lr * g, "velocity", when=Ne(momentum, 0))
RULE.assign(w, w + velocity, "momentum update", when=Ne(momentum, 0) & ~nesterov)
RULE.assign(w, w + momentum * velocity - lr * g, "Nesterov update", when=Ne(momentum, 0) & nesterov)

RULE.config("lr_0.1", learning_rate=0.1)
RULE.config("momentum", learning_rate=0.05, momentum=0.9)
RULE.config("nesterov", learning_rate=0.05, momentum=0.9, nesterov=True)
RULE.config("nesterov_light", learning_rate=0.2, momentum=0.5, nesterov=True)
