"""NAdam and NAdamW as optax defines them (optax 0.2.8: ``nadam = partial(adam, nesterov=True)``,
``nadamw = partial(adamw, nesterov=True)``).

The rule is OptaxAdam's (rules/optax_adam.py) with ``nesterov`` on by default, as ``functools.partial`` makes
it: Adam's moments ``mu <- (1 - b1)*g + b1*mu`` and ``nu <- (1 - b2)*g^2 + b2*nu`` from 0, and Dozat's
look-ahead in place of the bias-corrected first moment, ``b1*mu/(1 - b1^(t+1)) + (1 - b1)*g/(1 - b1^t)``,
divided by ``sqrt(nu/(1 - b2^t) + eps_root) + eps`` (``eps`` outside the root, ``eps_root`` inside).
``nesterov=False`` gives plain optax Adam. This is not Keras's or torch's NAdam (no momentum schedule
``mu_t``). ``nadamw`` adds ``weight_decay*w`` (default 1e-4) to that update before the learning rate scales
it: ``w <- w - lr*(update + weight_decay*w)``. Left out: ``mu_dtype``; ``nadamw``'s ``mask`` and a
``weight_decay`` schedule (a number only here).
"""

from optforge.compiler.dsl import w

from .optax_adam import OptaxAdam, lr, u

OptaxNadam = OptaxAdam.derive(
    "OptaxNadam",
    module="optax_nadam",
    title="NAdam (optax `nadam`)",
    summary="optax's NAdam: Adam with Dozat's Nesterov look-ahead on the bias-corrected first moment"
    " (optax.adam with nesterov=True), epsilon outside the root and eps_root inside.",
    references=(
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop",
        "optax.nadam: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.nadam",
    ),
)
OptaxNadam.set_default("nesterov", True)
OptaxNadam.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxNadam.config("fast_plain", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, eps_root=1e-6, nesterov=False)

OptaxNadamw = OptaxNadam.derive(
    "OptaxNadamw",
    module="optax_nadamw",
    title="NAdamW (optax `nadamw`)",
    summary="optax's NAdam with decoupled weight decay: weight_decay*w is added to the scaled update, before"
    " the learning rate (default 1e-4).",
    references=(
        "Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop",
        "optax.nadamw: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.nadamw",
    ),
)
weight_decay = OptaxNadamw.hyper(
    "weight_decay", 1e-4, "[0, inf)", "decoupled weight decay, added to the update", latex=r"\lambda"
)
OptaxNadamw.replace(w, w - lr * (u + weight_decay * w))
OptaxNadamw.config("default", learning_rate=0.003)
OptaxNadamw.config(
    "fast_plain",
    learning_rate=0.01,
    b1=0.8,
    b2=0.9,
    eps=1e-4,
    eps_root=1e-6,
    weight_decay=0.1,
    nesterov=False,
)

RULES = [OptaxNadam, OptaxNadamw]
