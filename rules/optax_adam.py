"""Adam and AdamW as optax defines them (optax 0.2.8: ``scale_by_adam``, ``adam``, ``adamw``).

``optax.adam = chain(scale_by_adam(b1, b2, eps, eps_root, nesterov), scale_by_learning_rate(lr))``:
the moments are ``(1 - b)*x + b*moment``, both are bias-corrected, and the update divides by
``sqrt(nu_hat + eps_root) + eps``: ``eps`` outside the root as in torch, ``eps_root`` inside. ``nesterov``
uses Dozat's look-ahead ``b1*mu_hat(t+1) + (1 - b1)*g/(1 - b1^t)``. ``optax.adamw`` adds
``weight_decay*w`` to that update before the learning rate scales it (``add_decayed_weights``):
``w <- w - lr*(update + weight_decay*w)``, the same as torch's decoupled decay. The learning rate has no
default, as in optax.
"""

from optforge.compiler.dsl import Rule, g, sqrt, t, w

OptaxAdam = Rule(
    "OptaxAdam",
    module="optax_adam",
    title="Adam (optax `adam`)",
    summary="optax's Adam: bias-corrected moments, epsilon outside the root and eps_root inside, optional"
    " Nesterov look-ahead.",
    references=(
        "Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015",
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop (nesterov)",
        "optax.adam: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adam",
    ),
)
lr = OptaxAdam.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
b1 = OptaxAdam.hyper("b1", 0.9, "[0, 1)", "decay rate of the first moment", latex=r"\beta_1")
b2 = OptaxAdam.hyper("b2", 0.999, "[0, 1)", "decay rate of the second moment", latex=r"\beta_2")
eps = OptaxAdam.hyper(
    "eps", 1e-8, "[0, inf)", "added to the denominator outside the square root", latex=r"\epsilon"
)
eps_root = OptaxAdam.hyper(
    "eps_root",
    0.0,
    "[0, inf)",
    "added to the denominator inside the square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
nesterov = OptaxAdam.flag("nesterov", False, "Nesterov momentum (Dozat's NAdam look-ahead)")
mu = OptaxAdam.state("mu", 0, "first moment", latex="m", dtype="mu_dtype")  # optax's docstring writes m and v
nu = OptaxAdam.state("nu", 0, "second moment", latex="v")

OptaxAdam.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
OptaxAdam.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
mu_hat = OptaxAdam.let("mu_hat", mu / (1 - b1**t), "bias correction", latex=r"\hat{m}")
OptaxAdam.assign(
    mu_hat,
    b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t),
    "Nesterov look-ahead",
    when=nesterov,
)
nu_hat = OptaxAdam.let("nu_hat", nu / (1 - b2**t), "bias correction", latex=r"\hat{v}")
u = OptaxAdam.let("u", mu_hat / (sqrt(nu_hat + eps_root) + eps), "scaled update", latex="u")
OptaxAdam.assign(w, w - lr * u, "parameter update")

OptaxAdam.config("default", learning_rate=0.003)  # optax has no default learning rate
OptaxAdam.config("fast_nesterov", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, eps_root=1e-6, nesterov=True)

OptaxAdamW = OptaxAdam.derive(
    "OptaxAdamW",
    module="optax_adamw",
    title="AdamW (optax `adamw`)",
    summary="optax's Adam with decoupled weight decay: weight_decay*w is added to the scaled update, before"
    " the learning rate (default 1e-4).",
    references=(
        "Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
        "optax.adamw: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adamw",
    ),
)
weight_decay = OptaxAdamW.hyper(
    "weight_decay", 1e-4, "[0, inf)", "decoupled weight decay, added to the update", latex=r"\lambda"
)
OptaxAdamW.replace(w, w - lr * (u + weight_decay * w))
OptaxAdamW.config("default", learning_rate=0.003)
OptaxAdamW.config(
    "fast_nesterov", learning_rate=0.01, b1=0.8, b2=0.9, eps=1e-4, weight_decay=0.1, nesterov=True
)

RULES = [OptaxAdam, OptaxAdamW]
