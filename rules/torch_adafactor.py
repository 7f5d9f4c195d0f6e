"""Adafactor as torch.optim defines it (torch 2.13, ``_single_tensor_adafactor``).

The second moment of a tensor of rank 2 or more is factored over its last two axes: a row moment
``r <- lerp(r, mean of g^2 over the last axis, beta_t)`` (one value per row) and a column moment
``c <- lerp(c, mean of g^2 over the axis before it, beta_t)`` (one per column), with
``beta_t = t**beta2_decay``; the estimate is ``r*c / max(mean of r over the rows, eps1)``, so an
``m x n`` matrix keeps ``m + n`` values (leading axes are batch axes: one row and one column per matrix).
A tensor of rank 0 or 1 keeps the full moment: over an axis it does not have, the mean leaves the values as
they are (as in broadcasting), so its column moment *is* torch's ``variance`` and the estimate is it
(its row moment, which torch does not keep, is the mean of g^2 over the tensor). Such a tensor's step is
element-wise: the kernels take it (``compiler/shape_class.py``).

The update is ``g / sqrt(max(estimate, eps1^2))``, divided by ``max(1, RMS(update) / d)`` (clipping by the
root mean square) and scaled by ``alpha = max(eps2, RMS(w)) * min(lr, 1/sqrt(t))``: the relative step size,
with the RMS of the parameter *before* its weight decay ``w <- w*(1 - lr*weight_decay)``. ``eps1`` left out
(None) is the machine epsilon of the parameter's dtype, as torch's ``torch.finfo(param.dtype).eps``. The
root mean squares divide by ``max(size, 1)``: an empty tensor steps (it has nothing to update), where
torch's divides by zero.

Differences from torch that remain: with ``eps1`` None, torch takes the machine epsilon of the first
parameter's dtype for every parameter of a ``step()`` (here each parameter's own: they differ only in a
group that mixes dtypes); a tensor ``lr`` is read as a Python float here (torch rounds ``alpha`` through its
float32 0-d ``lr``: 1e-8 apart in float64); torch counts steps per parameter, here per group (they differ
only for a parameter that had no gradient at some step). Left out: torch's ``foreach`` (the
multi-tensor path computes the same) and complex parameters.
"""

from optforge.compiler.dsl import (
    Given,
    Ne,
    Rule,
    g,
    machine_epsilon,
    maximum,
    minimum,
    rank,
    size,
    sqrt,
    t,
    tensor_mean,
    tensor_norm,
    w,
    where,
)

RULE = Rule(
    "TorchAdafactor",
    module="torch_adafactor",
    title="Adafactor (torch.optim `Adafactor`)",
    summary="Adafactor as torch.optim runs it: the second moment of a matrix factored into a row and a column"
    " moment (m + n values), an update clipped by its root mean square and scaled by the parameter's,"
    " a step size min(lr, 1/sqrt(t)), decoupled weight decay, and `maximize`.",
    references=(
        "Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018",
        "torch.optim.Adafactor: https://pytorch.org/docs/stable/generated/torch.optim.Adafactor.html",
    ),
)
lr = RULE.learning_rate(0.01)
beta2_decay = RULE.hyper(
    "beta2_decay",
    -0.8,
    "(-inf, 0]",
    "decay exponent: the second moment's weight is t**beta2_decay",
    latex=r"\gamma",
)
eps1 = RULE.option(
    "eps1",
    "[0, inf)",
    "floor of the second moment's estimate (None: the dtype's machine epsilon)",
    latex=r"\epsilon_1",
)
eps2 = RULE.hyper(
    "eps2", 1e-3, "[0, inf)", "floor of the parameter's RMS in the step size", latex=r"\epsilon_2"
)
d = RULE.hyper("d", 1.0, "[1, inf)", "clipping threshold of the update's RMS", latex="d")
weight_decay = RULE.hyper("weight_decay", 0.0, "[0, inf)", "decoupled weight decay", latex=r"\lambda")
maximize = RULE.flag("maximize", False, "maximize the objective (the gradient is negated first)")
row = RULE.state("row_var", 0, "running mean of g^2 over the last axis (one value per row)", latex="r")
col = RULE.state(
    "col_var", 0, "running mean of g^2 over the axis before the last (one per column)", latex="c"
)

RULE.assign(g, where(maximize, -g, g), "maximize")
elements = RULE.let("elements", maximum(size, 1), "elements of the tensor (an empty one: 1)", latex="N")
alpha = RULE.let(
    "alpha",
    maximum(eps2, tensor_norm(w) / sqrt(elements)) * minimum(lr, 1 / sqrt(t)),
    "relative step size",
    latex=r"\alpha",
)
RULE.assign(w, w * (1 - lr * weight_decay), "decoupled weight decay", when=Ne(weight_decay, 0))
beta = RULE.let("beta", t**beta2_decay, "weight of the new squared gradient", latex=r"\beta_t")
RULE.assign(row, row + beta * (tensor_mean(g**2, axis=-1) - row), "row moment")
RULE.assign(col, col + beta * (tensor_mean(g**2, axis=-2) - col), "column moment")
floor = RULE.let(
    "floor", where(Given(eps1), eps1, machine_epsilon), "floor of the estimate", latex=r"\epsilon"
)
estimate = RULE.let(
    "estimate",
    where(rank >= 2, row * col / maximum(tensor_mean(row, axis=-2), floor), col),
    "second moment: factored for a matrix",
    latex=r"\hat{v}",
)
u = RULE.let("u", g / sqrt(maximum(estimate, floor**2)), "scaled gradient", latex="u")
RULE.assign(w, w - alpha / maximum(1, tensor_norm(u) / (sqrt(elements) * d)) * u, "parameter update")

RULE.config(
    "everything",
    learning_rate=0.05,
    beta2_decay=-0.5,
    eps1=1e-20,
    eps2=1e-2,
    d=1.5,
    weight_decay=0.1,
    maximize=True,
)
