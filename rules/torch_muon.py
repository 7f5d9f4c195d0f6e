"""Muon as torch.optim defines it (torch 2.13, ``_single_tensor_muon``), with AdamW for the tensors it does
not take, as torch's documentation recommends pairing them.

A parameter of rank 2 (an ``m x n`` matrix) takes Muon's step: the momentum buffer ``B <- lerp(B, g, 1 -
mu)``, the update ``lerp(g, B, mu)`` with ``nesterov`` (on by default) or ``B``; that matrix (transposed
when it is tall, ``m > n``) divided by ``max(||X||, eps)``, then five steps of the quintic Newton-Schulz
iteration ``A = X X^T``, ``X <- a X + (b A + c A A) X`` with torch's coefficients ``(a, b, c) = (3.4445,
-4.7750, 2.0315)``; the weight decay ``w <- w*(1 - lr*weight_decay)`` with the rate as given, then the step
``w <- w - lr*sqrt(max(1, m/n))*X`` (torch's ``adjust_lr_fn`` None or "original", its default), or
``w <- w - lr*0.2*sqrt(max(m, n))*X`` with ``adjust_lr_fn="match_rms_adamw"`` (the update's RMS then
matches AdamW's, so that AdamW's rate serves).

torch.optim.Muon refuses every other tensor (a ``ValueError`` for a vector, a scalar, a tensor of rank 3
or more); here they take torch.optim.AdamW's step with ``adam_betas``, ``adam_eps`` and
``adam_weight_decay`` (AdamW's defaults) and the same ``lr``: one optimizer for a whole model, where torch
needs two. The first moment of either is the one state ``momentum_buffer`` (AdamW's ``exp_avg`` for a
tensor that is not a matrix); ``exp_avg_sq`` is kept for every tensor (updated only for those that are not
matrices).

torch computes the Newton-Schulz iteration in bfloat16; this rule computes it in the parameter's dtype
(float32 parameters: float32), so it equals torch.optim.Muon with that cast left out to 1e-12 in float64
(the library tests make the cast an identity), and differs from torch's own by bfloat16's rounding (about
1e-2 of the update). A tall matrix is iterated on its ``n x n`` Gram matrix ``X^T X`` without transposing
it: ``X <- a X + X (b C + c C C)``, equal to torch's to rounding. Left out: ``ns_coefficients`` and
``ns_steps`` (torch's defaults, written in the rule), AdamW's ``amsgrad``.
"""

from optforge.compiler.dsl import (
    Eq,
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
    w,
    where,
)
from optforge.rules._newton_schulz import newton_schulz

RULE = Rule(
    "TorchMuon",
    module="torch_muon",
    title="Muon (torch.optim `Muon`)",
    summary="torch's Muon for each matrix (rank 2): a momentum orthogonalised by five Newton-Schulz steps,"
    " the rate scaled by sqrt(max(1, m/n)); torch's AdamW for every other tensor.",
    references=(
        "Jordan, Muon: An optimizer for hidden layers in neural networks, 2024,"
        " https://kellerjordan.github.io/posts/muon/",
        "torch.optim.Muon: https://pytorch.org/docs/stable/generated/torch.optim.Muon.html",
        "torch.optim.AdamW: https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html",
    ),
)
lr = RULE.learning_rate(0.001)
weight_decay = RULE.hyper(
    "weight_decay", 0.1, "[0, inf)", "decoupled weight decay of the matrices", latex=r"\lambda"
)
momentum = RULE.hyper("momentum", 0.95, "[0, 1)", "momentum of the matrices' buffer", latex=r"\beta")
nesterov = RULE.flag("nesterov", True, "Nesterov's look-ahead on the momentum (matrices)")
adjust_lr_fn = RULE.choice(
    "adjust_lr_fn",
    (None, "original", "match_rms_adamw"),
    None,
    "the rate's scale for an m x n matrix: None or 'original' sqrt(max(1, m/n)), 'match_rms_adamw'"
    " 0.2*sqrt(max(m, n))",
)
eps = RULE.hyper(
    "eps", 1e-7, "[0, inf)", "lower bound of the norm that normalises the update", latex=r"\epsilon"
)
adam_beta1 = RULE.hyper(
    "adam_beta1", 0.9, "[0, 1)", "AdamW's first-moment decay (torch's adam_betas[0])", latex=r"\beta_1"
)
adam_beta2 = RULE.hyper(
    "adam_beta2", 0.999, "[0, 1)", "AdamW's second-moment decay (torch's adam_betas[1])", latex=r"\beta_2"
)
adam_eps = RULE.hyper(
    "adam_eps", 1e-8, "[0, inf)", "added to AdamW's bias-corrected root", latex=r"\epsilon_{\mathrm{A}}"
)
adam_weight_decay = RULE.hyper(
    "adam_weight_decay", 0.01, "[0, inf)", "AdamW's decoupled weight decay", latex=r"\lambda_{\mathrm{A}}"
)
buf = RULE.state("momentum_buffer", 0, "momentum (AdamW's first moment for the other tensors)", latex="m")
v = RULE.state("exp_avg_sq", 0, "AdamW's second moment (tensors that are not matrices)", latex="v")

matrix = RULE.let("matrix", Eq(rank, 2), "a matrix: Muon's step")
decay = RULE.let("decay", where(matrix, weight_decay, adam_weight_decay), "weight decay", latex="d")
RULE.assign(w, w * (1 - lr * decay), "decoupled weight decay")
beta = RULE.let(
    "beta", where(matrix, 1 - momentum, 1 - adam_beta1), "weight of the gradient", latex=r"\gamma"
)
RULE.assign(buf, buf + beta * (g - buf), "momentum (lerp)")

# Muon: five Newton-Schulz steps from the normalised update, on the smaller Gram matrix
a, b, c = 3.4445, -4.7750, 2.0315  # torch's DEFAULT_A, DEFAULT_B, DEFAULT_C
U = RULE.let("U", buf, "the update", latex="U")
RULE.assign(U, g + momentum * (buf - g), "Nesterov look-ahead (lerp)", when=nesterov)
tall = RULE.let("tall", rows > cols, "a tall matrix: its Gram matrix X^T X is the smaller")
X = RULE.let("X", U / maximum(tensor_norm(U), eps), "normalisation", latex="X")
newton_schulz(RULE, X, tall, (a, b, c), 5, scaled_first=False)
scale = RULE.let(
    "scale",
    where(
        adjust_lr_fn == "match_rms_adamw",
        0.2 * sqrt(maximum(rows, cols)),
        sqrt(maximum(1, rows / maximum(cols, 1))),
    ),
    "shape scaling",
    latex="s",
)

# AdamW, for every tensor that is not a matrix
RULE.assign(v, adam_beta2 * v + (1 - adam_beta2) * g**2, "AdamW's second moment", only_if=Ne(rank, 2))
denom = sqrt(v) / sqrt(1 - adam_beta2**t) + adam_eps  # in the update: computed only where AdamW steps
RULE.assign(
    w,
    w - lr * where(matrix, scale * X, buf / ((1 - adam_beta1**t) * denom)),
    "parameter update: Muon's for a matrix, AdamW's otherwise",
)

RULE.config("match_rms_adamw", learning_rate=0.01, adjust_lr_fn="match_rms_adamw")
RULE.config(
    "everything",
    learning_rate=0.01,
    weight_decay=0.05,
    momentum=0.9,
    nesterov=False,
    eps=1e-5,
    adam_beta1=0.8,
    adam_beta2=0.9,
    adam_eps=1e-6,
    adam_weight_decay=0.1,
)
