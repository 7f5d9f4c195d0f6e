"""Nadam, as Keras 3 defines it (seed page 004; REFERENCE_RULES.md section 2.6).

The momentum schedule is ``u_t = beta_1*(1 - 0.5*0.96^t)`` (Keras 3, not the
``0.96^(0.004 t)`` of tf.keras 2 or torch's ``momentum_decay``), and its running
product ``u_product`` is one scalar for the whole optimizer, updated once per step
before any parameter. optforge keeps it in float64 (NumPy, torch) or JAX's
default float type, never in a low-precision parameter's dtype.
"""

from optforge.compiler.dsl import Rule, g, sqrt, t, w

RULE = Rule(
    "Nadam",
    title="Nadam (Keras 3 `Nadam`)",
    summary="Adam with Nesterov momentum (Dozat), with Keras's momentum schedule.",
    references=(
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop",
        "Keras 3 `keras.optimizers.Nadam`: https://keras.io/api/optimizers/Nadam/",
    ),
)
lr = RULE.learning_rate(0.001)
beta_1 = RULE.hyper("beta_1", 0.9, "[0, 1)", "exponential decay rate of the first moment")
beta_2 = RULE.hyper("beta_2", 0.999, "[0, 1)", "exponential decay rate of the second moment")
epsilon = RULE.hyper(
    "epsilon", 1e-7, "[0, inf)", "small constant for numerical stability (Kingma and Ba's epsilon hat)"
)
u_product = RULE.state(
    "u_product", 1, "product of the momentum schedule u_1 ... u_t", scope="global", latex=r"\Pi"
)
m = RULE.state("m", 0, "first moment")
v = RULE.state("v", 0, "second moment")

u_t = RULE.let("u_t", beta_1 * (1 - 0.5 * 0.96**t), "momentum schedule", latex=r"\mu")
u_t1 = RULE.let("u_t1", beta_1 * (1 - 0.5 * 0.96 ** (t + 1)), "momentum schedule", latex=r"\mu_{t+1}")
RULE.assign(u_product, u_product * u_t, "momentum schedule")
RULE.assign(m, m + (1 - beta_1) * (g - m), "first moment")
RULE.assign(v, v + (1 - beta_2) * (g**2 - v), "second moment")
m_hat = RULE.let(
    "m_hat", u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product), "Nesterov momentum"
)
v_hat = RULE.let("v_hat", v / (1 - beta_2**t), "bias correction")
RULE.assign(w, w - lr * m_hat / (sqrt(v_hat) + epsilon), "parameter update")

RULE.config("fast", learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-4)
