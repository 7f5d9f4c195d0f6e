"""Adafactor as optax defines it (optax 0.2.8: ``adafactor = chain(scale_by_factored_rms(...),
clip_by_block_rms(clipping_threshold), scale_by_learning_rate(learning_rate, flip_sign=False),
scale_by_param_block_rms(), ema(momentum, debias=False), add_decayed_weights(weight_decay_rate),
scale(-1))``).

The second moment of a tensor whose two longest axes are both at least ``min_dim_size_to_factor`` long is
factored over them (optax's ``_factored_dims``: the axes ``numpy.argsort`` of the shape puts last, wherever
they are): a moment of ``g^2 + eps`` averaged over the longest axis (``v_row``) and one averaged over the
second longest (``v_col``), so an ``m x n`` matrix keeps ``m + n`` values; the estimate is
``v_row * v_col / mean(v_row over the second longest axis)``. Every other tensor keeps the full moment
``v``. The weight of the new squared gradient is ``1 - decay_t`` with ``decay_t = 1 - (t - decay_offset)^-
decay_rate``, which optax computes in float32 (``float32`` here, rounded to nearest: XLA's float32 power is
not always the nearest float32, 1 ulp apart at 8 of the first 200 steps on the CPU measured).

The update ``g / sqrt(estimate)`` is divided by ``max(1, RMS(update) / clipping_threshold)`` (None: not
clipped), scaled by the learning rate and by ``max(RMS(w), 1e-3)`` (``multiply_by_parameter_scale``), kept
as an exponential moving average when ``momentum`` is given (optax keeps it in ``dtype_momentum``, float32
by default: ``float32`` here, and ``momentum * m`` computed in float32 as there), plus
``weight_decay_rate * w``, and subtracted.

Differences from optax: the learning rate is required (optax's None leaves the scaling out: give 1.0);
``min_dim_size_to_factor=None`` factors no tensor (optax takes an int); ``dtype_momentum`` other than
float32 and ``weight_decay_mask`` are not taken.
"""

from optforge.compiler.dsl import (
    Given,
    Rule,
    float32,
    g,
    largest_axis,
    maximum,
    rank,
    second_largest_axis,
    second_largest_length,
    size,
    sqrt,
    t,
    tensor_mean,
    tensor_sum,
    w,
    where,
)

RULE = Rule(
    "OptaxAdafactor",
    module="optax_adafactor",
    title="Adafactor (optax `adafactor`)",
    summary="Adafactor as optax runs it: the second moment of each tensor whose two longest axes are long"
    " enough factored over them (m + n values for an m x n matrix), the update clipped by its root mean"
    " square, scaled by the parameter's, an optional momentum and weight decay.",
    references=(
        "Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018",
        "optax.adafactor: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adafactor",
    ),
)
lr = RULE.learning_rate(None, "step size (optax's None, no scaling, is 1.0 here)")
min_dim = RULE.option(
    "min_dim_size_to_factor",
    "[0, inf)",
    "a tensor is factored where its two longest axes are at least this long (None: no tensor is)",
    integer=True,
    default=128,
    latex=r"d_{\min}",
)
decay_rate = RULE.hyper("decay_rate", 0.8, "[0, inf)", "exponent of the second moment's decay", latex="c")
decay_offset = RULE.hyper(
    "decay_offset", 0.0, "(-inf, 1)", "steps before the decay starts (below 1: t - k > 0)", latex="k"
)
factored = RULE.flag("factored", True, "factor the second moment of the tensors that are long enough")
scale_by_w = RULE.flag(
    "multiply_by_parameter_scale", True, "scale the update by the parameter's root mean square"
)
clipping = RULE.option(
    "clipping_threshold", "(0, inf)", "largest RMS of the update (None: not clipped)", default=1.0, latex="d"
)
momentum = RULE.option(
    "momentum", "[0, 1]", "decay of the update's moving average (None: none)", latex=r"\beta"
)
decay = RULE.option(
    "weight_decay_rate",
    "[0, inf)",
    "weight decay added to the update (not scaled by the rate)",
    latex=r"\lambda",
)
eps = RULE.hyper("eps", 1e-30, "(0, inf)", "added to the squared gradient", latex=r"\epsilon")

v_row = RULE.state("v_row", 0, "moment of g^2 over the longest axis (factored tensors)", latex="r")
v_col = RULE.state("v_col", 0, "moment of g^2 over the second longest axis (factored tensors)", latex="c")
v = RULE.state("v", 0, "second moment (tensors that are not factored)", latex="v")
m = RULE.state("m", 0, "moving average of the update (float32)", latex="m", exists_if=Given(momentum))

split = RULE.let(
    "split",
    factored & (rank >= 2) & Given(min_dim) & (second_largest_length >= min_dim),
    "the tensor is factored",
)
# optax: t = float32(step + 1) with step = t - 1 - decay_offset, and 1 - t^-c in float32
beta = RULE.let(
    "beta", float32(1 - float32(float32(t - decay_offset) ** -decay_rate)), "decay", latex=r"\beta_t"
)
one_minus_beta = RULE.let("one_minus_beta", float32(1 - beta), "weight of the new squared gradient")
g2 = RULE.let("g2", g**2 + eps, "squared gradient", latex="s")
RULE.assign(
    v_row, beta * v_row + one_minus_beta * tensor_mean(g2, axis=largest_axis), "row moment", only_if=split
)
RULE.assign(
    v_col,
    beta * v_col + one_minus_beta * tensor_mean(g2, axis=second_largest_axis),
    "column moment",
    only_if=split,
)
RULE.assign(v, beta * v + one_minus_beta * g2, "full moment", only_if=~split)
u = RULE.let(
    "u",
    where(
        split,
        g * (v_row / tensor_mean(v_row, axis=second_largest_axis)) ** -0.5 * v_col**-0.5,
        g * v**-0.5,
    ),
    "scaled gradient",
    latex="u",
)
# a mean over the tensor: over max(size, 1) elements, so that an empty tensor divides nothing by 0
elements = RULE.let("elements", maximum(size, 1), "elements of the tensor (an empty one: 1)", latex="N")
RULE.assign(
    u,
    u / maximum(1, sqrt(tensor_sum(u**2) / elements) / clipping),
    "clipped by its root mean square",
    only_if=Given(clipping),
)
RULE.assign(u, lr * u, "learning rate")
RULE.assign(u, u * maximum(sqrt(tensor_sum(w**2) / elements), 1e-3), "parameter scale", only_if=scale_by_w)
# optax: (1 - momentum)*u + momentum*m with m a float32 array: the product is float32 (a Python float
# times a float32 array keeps float32), the sum in the update's dtype
RULE.assign(u, (1 - momentum) * u + float32(float32(momentum) * m), "moving average", only_if=Given(momentum))
RULE.assign(m, float32(u), "the moving average, kept in float32", only_if=Given(momentum))
RULE.assign(u, u + decay * w, "weight decay", only_if=Given(decay))
RULE.assign(w, w - u, "parameter update")

RULE.config("default", learning_rate=0.1)  # optax has no default learning rate
RULE.config("factored", min_dim_size_to_factor=3, learning_rate=0.1)
RULE.config(
    "everything",
    learning_rate=0.05,
    min_dim_size_to_factor=2,
    decay_rate=0.7,
    decay_offset=-2.0,
    clipping_threshold=0.5,
    momentum=0.9,
    weight_decay_rate=0.01,
    eps=1e-20,
)
RULE.config(
    "unclipped",
    learning_rate=0.1,
    clipping_threshold=None,
    multiply_by_parameter_scale=False,
    factored=False,
)
