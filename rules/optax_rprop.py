"""Rprop as optax defines it (optax 0.2.8: ``rprop = chain(scale_by_rprop(...), scale(-1))``).

Each element keeps a step size, which starts at the learning rate (optax's ``learning_rate`` is the initial
step size, read once), and the previous update. Where the gradient times the previous update is positive
the step size grows by ``eta_plus``, where it is negative it shrinks by ``eta_minus``, each clipped to
``[min_step_size, max_step_size]``; where it is 0 (the first step, or after a skipped step) it stays. This
step's update is ``step_size*sign(g)``, 0 where the sign changed (that 0 is also what the next step
compares with). What optax applies to the parameters lags by a step: ``scale_by_rprop`` returns the
*previous* step's update where the sign held (its ``jax.tree.map`` takes ``state.prev_updates``), so the
first step leaves the parameters unchanged (measured: optax 0.2.8, ``rprop(0.01)`` on ``w = 1, g = 1``
returns an update of 0). torch.optim.Rprop applies this step's update, zeroes the gradient where the sign
changed, and compares the next gradient with the previous gradient, not with the previous update.
"""

from optforge.compiler.dsl import Eq, Rule, clip, g, sign, t, w, where

OptaxRprop = Rule(
    "OptaxRprop",
    module="optax_rprop",
    title="Rprop (optax `rprop`)",
    summary="Resilient backpropagation: a step size per element that grows while the gradient keeps its sign"
    " and shrinks when it flips; the update is the step size times the gradient's sign.",
    references=(
        "Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP"
        " Algorithm, ICNN 1993",
        "optax.rprop: https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.rprop",
    ),
)
lr = OptaxRprop.learning_rate(None, "the initial step size (read at the first step only)")
eta_minus = OptaxRprop.hyper(
    "eta_minus", 0.5, "[0, 1]", "factor of the step size where the sign flips", latex=r"\eta^-"
)
eta_plus = OptaxRprop.hyper(
    "eta_plus", 1.2, "[1, inf)", "factor of the step size where the sign holds", latex=r"\eta^+"
)
min_step_size = OptaxRprop.hyper(
    "min_step_size", 1e-6, "[0, inf)", "smallest step size", latex=r"\Gamma_{\min}"
)
max_step_size = OptaxRprop.hyper(
    "max_step_size", 50.0, "[0, inf)", "largest step size", latex=r"\Gamma_{\max}"
)
step_size = OptaxRprop.state(
    "step_size", 0, "step size per element (optax's state names it step_sizes)", latex=r"\Gamma"
)
prev_updates = OptaxRprop.state("prev_updates", 0, "the previous update", latex="p")

s = OptaxRprop.let("s", g * prev_updates, "agreement of the gradient with the previous update", latex="s")
OptaxRprop.assign(step_size, where(Eq(t, 1), lr, step_size), "the learning rate is the first step size")
OptaxRprop.assign(
    step_size,
    where(
        Eq(s, 0),
        step_size,
        clip(step_size * where(s > 0, eta_plus, eta_minus), min_step_size, max_step_size),
    ),
    "step size",
)
OptaxRprop.assign(w, w - where(s < 0, 0, prev_updates), "parameter update: the previous step's update")
OptaxRprop.assign(
    prev_updates, where(s < 0, 0, step_size * sign(g)), "this step's update, applied at the next"
)

OptaxRprop.config("default", learning_rate=0.01)  # optax has no default learning rate
OptaxRprop.config(
    "bounded", learning_rate=0.1, eta_minus=0.3, eta_plus=1.5, min_step_size=0.01, max_step_size=0.2
)

RULE = OptaxRprop
