"""Muon as optax defines it (optax 0.2.8: ``optax.contrib.muon``): momentum orthogonalised by a Newton-Schulz
iteration for the matrices, AdamW for every other tensor.

A parameter of rank 2 (an ``m x n`` matrix) takes Muon's step (``scale_by_muon``, ``scale_by_shape``,
``add_decayed_weights``, ``scale_by_learning_rate``): the first moment ``mu <- (1 - beta)*g + beta*mu``, with
Nesterov's look-ahead ``beta*mu/(1 - beta^(t+1)) + (1 - beta)*g/(1 - beta^t)`` (``nesterov``, on by default)
or the bias-corrected moment ``mu/(1 - beta^t)``; that value divided by its Frobenius norm plus ``eps``, then
five steps of the quintic Newton-Schulz iteration ``A = X X^T``, ``X <- a X + (b A + (c A) A) X`` with
optax's coefficients ``(a, b, c) = (3.4445, -4.7750, 2.0315)``; with ``adaptive``, that scaled by
``<mu_hat, X>``; then ``sqrt(max(1, n/m))`` times it (``consistent_rms`` given: ``sqrt(max(m, n)) *
consistent_rms``), plus ``weight_decay*w``, times ``-lr``.

Every other tensor (a vector, a scalar, a tensor of rank 3 or more) takes ``optax.adamw(learning_rate, b1=adam_b1,
b2=adam_b2, eps=eps, eps_root=adam_eps_root, weight_decay=adam_weight_decay, nesterov=nesterov)``, as optax's
partition does; the first moment of either is the one state ``mu`` (its decay ``beta`` or ``adam_b1``).

For a tall matrix (``m > n``) optax transposes it and iterates on the ``n x n`` Gram matrix ``X^T X``;
this rule writes that as ``X <- a X + X (b C + (c C) C)`` with ``C = X^T X``: the same products on the
untransposed matrix, equal to rounding (a product's last bit: ``(c C) C`` is symmetric only to rounding).
The loop over the tensors computes only the branch a tensor takes (``passes/shape_guards.py``: the
Newton-Schulz steps for a matrix, on its smaller Gram matrix; nothing of them for a vector). The
Newton-Schulz coefficients and the step count are optax's defaults, written in the rule (``ns_coeffs``,
``ns_steps`` are not hyperparameters here; a variant writes its own loop). Left out:
``mu_dtype``, ``weight_decay_mask``, ``adam_learning_rate`` (Adam takes the same rate), ``preconditioning``
other than ``'frobenius'``, ``muon_weight_dimension_numbers`` (matrices are the tensors of rank 2). Adam's
second moment ``nu`` is stored for every tensor (updated only for those that are not matrices).
"""

from optforge.compiler.dsl import (
    Eq,
    Given,
    Ne,
    Rule,
    cols,
    g,
    maximum,
    rank,
    rows,
    sqrt,
    t,
    tensor_norm,
    tensor_sum,
    w,
    where,
)
from optforge.rules._newton_schulz import newton_schulz

RULE = Rule(
    "OptaxMuon",
    module="optax_muon",
    title="Muon (optax `contrib.muon`)",
    summary="Momentum orthogonalised by five Newton-Schulz steps for each matrix (rank 2), AdamW for every"
    " other tensor, as optax.contrib.muon partitions them.",
    references=(
        "Jordan, Muon: An optimizer for hidden layers in neural networks, 2024,"
        " https://kellerjordan.github.io/posts/muon/",
        "Liu et al., Muon is Scalable for LLM Training, 2025 (consistent_rms)",
        "optax.contrib.muon: https://optax.readthedocs.io/en/latest/api/contrib.html#optax.contrib.muon",
    ),
)
lr = RULE.learning_rate(None, "a global scaling factor, fixed or a schedule step -> lr")
beta = RULE.hyper("beta", 0.95, "[0, 1)", "decay rate of a matrix's first moment", latex=r"\beta")
eps = RULE.hyper(
    "eps",
    1e-8,
    "[0, inf)",
    "added to the Frobenius norm before the iteration, and to Adam's denominator",
    latex=r"\epsilon",
)
weight_decay = RULE.hyper(
    "weight_decay", 0.0, "[0, inf)", "decoupled weight decay of the matrices", latex=r"\lambda"
)
nesterov = RULE.flag("nesterov", True, "Nesterov's look-ahead on the first moment (Muon and Adam)")
adaptive = RULE.flag("adaptive", False, "scale a matrix's step by <mu_hat, X> (the dual norm)")
consistent_rms = RULE.option(
    "consistent_rms",
    "[0, inf)",
    "scale a matrix's step by sqrt(max(m, n)) times this (None: by sqrt(max(1, n/m)))",
    latex=r"\rho",
)
adam_b1 = RULE.hyper("adam_b1", 0.9, "[0, 1)", "Adam's first-moment decay (not matrices)", latex=r"\beta_1")
adam_b2 = RULE.hyper(
    "adam_b2", 0.999, "[0, 1)", "Adam's second-moment decay (not matrices)", latex=r"\beta_2"
)
adam_eps_root = RULE.hyper(
    "adam_eps_root",
    0.0,
    "[0, inf)",
    "added inside Adam's square root",
    latex=r"\epsilon_{\mathrm{root}}",
)
adam_weight_decay = RULE.hyper(
    "adam_weight_decay", 0.0, "[0, inf)", "Adam's decoupled weight decay", latex=r"\lambda_{\mathrm{A}}"
)
mu = RULE.state("mu", 0, "first moment", latex="m", dtype="mu_dtype")
nu = RULE.state("nu", 0, "Adam's second moment (tensors that are not matrices)", latex="v")

matrix = RULE.let("matrix", Eq(rank, 2), "a matrix: Muon's step")
d = RULE.let("d", where(matrix, beta, adam_b1), "decay of the first moment", latex="d")
RULE.assign(mu, (1 - d) * g + d * mu, "first moment")
mu_hat = RULE.let("mu_hat", mu / (1 - d**t), "bias correction", latex=r"\hat{m}")
RULE.assign(
    mu_hat,
    d * mu / (1 - d ** (t + 1)) + (1 - d) * g / (1 - d**t),
    "Nesterov look-ahead",
    when=nesterov,
)

# Muon: five Newton-Schulz steps from the Frobenius-normalised moment, on the smaller Gram matrix
a, b, c = 3.4445, -4.7750, 2.0315  # optax's _DEFAULT_NS_COEFFS
tall = RULE.let("tall", rows > cols, "a tall matrix: its Gram matrix X^T X is the smaller")
X = RULE.let("X", mu_hat / (tensor_norm(mu_hat) + eps), "Frobenius normalisation", latex="X")
newton_schulz(RULE, X, tall, (a, b, c), 5, scaled_first=True)
RULE.assign(X, tensor_sum(mu_hat * X) * X, "dual-norm scaling", when=adaptive)
scale = RULE.let(
    "scale",
    where(
        Given(consistent_rms),
        sqrt(maximum(rows, cols)) * consistent_rms,
        sqrt(maximum(1, cols / maximum(rows, 1))),  # a 0 x n matrix: 1, where optax divides by zero
    ),
    "shape scaling",
    latex="s",
)

# Adam, for every tensor that is not a matrix
RULE.assign(nu, (1 - adam_b2) * g**2 + adam_b2 * nu, "Adam's second moment", only_if=Ne(rank, 2))
nu_hat = nu / (1 - adam_b2**t)  # written in the update: computed only for a tensor that takes Adam's step
u = mu_hat / (sqrt(nu_hat + adam_eps_root) + eps)

RULE.assign(
    w,
    w - lr * where(matrix, scale * X + weight_decay * w, u + adam_weight_decay * w),
    "parameter update: Muon's for a matrix, AdamW's otherwise",
)

RULE.config("default", learning_rate=0.02)  # optax has no default learning rate
RULE.config(
    "everything",
    learning_rate=0.01,
    beta=0.9,
    eps=1e-6,
    weight_decay=0.1,
    nesterov=False,
    adaptive=True,
    consistent_rms=0.2,
    adam_b1=0.8,
    adam_b2=0.9,
    adam_eps_root=1e-6,
    adam_weight_decay=0.05,
)
