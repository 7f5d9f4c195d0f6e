"""Generated optimizers against the real libraries: Keras 3 (JAX backend, float64), torch.optim, optax."""

from __future__ import annotations

import numpy as np
import pytest
from cases import RULES, rule_configs
from drivers import BACKENDS, assert_close, problem, run, varying_lr
from references import KERAS_RULES, OTHER_ORACLES, keras_optimizer, optax_transform, torch_optimizer

STEPS = 100


def defaults(rule) -> dict:
    return {n: h.default for n, h in rule.hypers.items()}


def test_every_rule_has_a_reference():
    """A new rule must say which library it is checked against (add it to references.py)."""
    for rule in RULES.values():
        assert rule.name in KERAS_RULES | OTHER_ORACLES, (
            f"{rule.name} has no reference in tests/references.py"
        )


def keras_run(rule, cfg, params0, grads, learning_rate):
    import keras

    keras.config.set_floatx("float64")
    variables = [keras.Variable(p, dtype="float64") for p in params0]
    opt = keras_optimizer(rule.name, cfg, learning_rate)
    for g in grads:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x) for x in g], variables))
    return [np.asarray(v.value) for v in variables]


def keras_configs():
    return [p for p in rule_configs() if p.values[0].name in KERAS_RULES]


@pytest.mark.parametrize("rule, name, cfg", keras_configs())
def test_keras(rule, name, cfg):
    params0, grads = problem(STEPS)
    lr = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    want = keras_run(rule, cfg, params0, grads, lr)
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs keras")


@pytest.mark.parametrize("rule, name, cfg", keras_configs())
def test_keras_with_a_learning_rate_that_changes_every_step(rule, name, cfg):
    import keras

    class Varying(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, base):
            self.base = base

        def __call__(self, step):
            # keras.ops would compute this in float32 (Keras's schedules round there); the step is concrete
            return np.float64(varying_lr(self.base)(int(step)))

    base = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    params0, grads = problem(STEPS)
    want = keras_run(rule, cfg, params0, grads, Varying(base))
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads, varying_lr(base))
        assert_close(got, want, 1e-12, f"{backend} vs keras (varying lr)")


def torch_cases():
    import torch

    out = []
    for p in rule_configs():
        rule, name, cfg = p.values
        if torch_optimizer(rule.name, cfg, [torch.zeros(1)], defaults(rule)) is not None:
            out.append(p)
    return out


@pytest.mark.parametrize("rule, name, cfg", torch_cases())
def test_torch_optim_where_semantics_coincide(rule, name, cfg):
    import torch

    params0, grads = problem(STEPS)
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps step counters and NAdam's mu_product in this dtype
    try:
        opt = torch_optimizer(rule.name, cfg, params, defaults(rule))
        for g in grads:
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()
    finally:
        torch.set_default_dtype(previous)
    want = [p.detach().numpy() for p in params]
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs torch.optim.{type(opt).__name__}")


def optax_cases():
    return [
        p
        for p in rule_configs()
        if optax_transform(p.values[0].name, p.values[2], defaults(p.values[0])) is not None
    ]


@pytest.mark.parametrize("rule, name, cfg", optax_cases())
def test_optax_where_semantics_coincide(rule, name, cfg):
    import jax.numpy as jnp
    import optax

    params0, grads = problem(STEPS)
    tx = optax_transform(rule.name, cfg, defaults(rule))
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update([jnp.asarray(x) for x in g], state, params)
        params = optax.apply_updates(params, updates)
    want = [np.asarray(p) for p in params]
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs optax")
