"""Keras's shared options on every optimizer, against keras.optimizers (KERAS_BACKEND=jax, float64).

REFERENCE_RULES.md sections 2.1-2.2: each option alone and the combinations that interact
(accumulation with a schedule, with clipping, with weight decay, with EMA and overwrite), 60 steps,
<= 1e-12 relative, in all three backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import RULES
from drivers import BACKENDS, assert_close, problem, run, varying_lr
from references import keras_optimizer

STEPS = 60

#: the configuration of each Keras rule the options run on (momentum, Nesterov, non-default betas...)
BASE = {
    "SGD": dict(learning_rate=0.05, momentum=0.9, nesterov=True),
    "Adamax": dict(learning_rate=0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-3),
    "Adagrad": dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3),
    "Nadam": dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-4),
}

OPTIONS = {
    "weight_decay": dict(weight_decay=0.05),
    "clipnorm": dict(clipnorm=0.5),
    "clipvalue": dict(clipvalue=0.3),
    "global_clipnorm": dict(global_clipnorm=1.0),
    "ema": dict(use_ema=True, ema_momentum=0.9),
    "ema_overwrite": dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5),
    "loss_scale": dict(loss_scale_factor=128.0),
    "accumulation": dict(gradient_accumulation_steps=3),
    "accumulation_schedule": dict(gradient_accumulation_steps=3),  # with a schedule (below)
    "accumulation_clipnorm": dict(gradient_accumulation_steps=3, clipnorm=0.5),
    "accumulation_global_clipnorm": dict(
        gradient_accumulation_steps=2, global_clipnorm=1.0, loss_scale_factor=4.0
    ),
    "accumulation_weight_decay": dict(gradient_accumulation_steps=3, weight_decay=0.05),
    "accumulation_ema_overwrite": dict(
        gradient_accumulation_steps=3, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=2
    ),
    "everything": dict(
        weight_decay=0.01,
        clipvalue=0.5,
        use_ema=True,
        ema_momentum=0.7,
        ema_overwrite_frequency=4,
        loss_scale_factor=2.0,
        gradient_accumulation_steps=2,
    ),
}
SCHEDULED = {"accumulation_schedule"}


def keras_run(rule_name, hypers, params0, grads, learning_rate):
    """Keras's own apply, jitted through its stateless API (eager Keras takes seconds per run)."""
    import jax
    import keras

    keras.config.set_floatx("float64")
    variables = [keras.Variable(p, dtype="float64") for p in params0]
    opt = keras_optimizer(rule_name, hypers, learning_rate)
    opt.build(variables)
    step = jax.jit(opt.stateless_apply)
    values = [v.value for v in variables]
    opt_values = [v.value for v in opt.variables]
    for g in grads:
        values, opt_values = step(opt_values, [jax.numpy.asarray(x) for x in g], values)
    return [np.asarray(v) for v in values]


def keras_schedule(base):
    import jax.numpy as jnp
    import keras

    class Varying(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return base * (1 + 0.8 * jnp.sin(0.37 * jnp.asarray(step, jnp.float64)))

    return Varying()


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("rule_name", list(BASE))
def test_option_matches_keras(rule_name, option):
    rule = RULES[rule_name]
    hypers = {**BASE[rule_name], **OPTIONS[option]}
    params0, grads = problem(STEPS)
    base_lr = hypers["learning_rate"]
    scheduled = option in SCHEDULED
    want = keras_run(rule_name, hypers, params0, grads, keras_schedule(base_lr) if scheduled else base_lr)
    for backend in BACKENDS:
        got, _ = run(backend, rule, hypers, params0, grads, varying_lr(base_lr) if scheduled else None)
        assert_close(got, want, 1e-12, f"{backend} vs keras.optimizers.{rule_name} with {option}")
