"""Every rule and configuration gives the same parameters and state in NumPy, JAX and torch."""

from __future__ import annotations

import numpy as np
import pytest
from cases import rule_configs
from drivers import assert_close, problem, run, varying_lr

STEPS = 100


def _cases() -> list:
    """Every rule and named configuration in float64; each rule's default in float32 too (the float32 paths
    differ from the float64 ones in dtype only, not by configuration; test_precision.py goes further). Not
    the rules named after their library (TorchAdam, OptaxAdam): each backend equals the library on each
    configuration, in float64 and float32 (test_reference_libraries.py), so they agree already; nor, in
    float64, Keras's rules: test_keras compares each backend with Keras on each configuration, and their
    states with one another."""
    from references import KERAS_RULES, library_reference

    return [
        pytest.param(*p.values, dtype, tol, id=f"{p.id}-{dtype_id}")
        for p in rule_configs()
        for dtype, tol, dtype_id in ((np.float64, 1e-12, "float64"), (np.float32, 1e-5, "float32"))
        if (dtype is np.float32 and p.values[1] == "default")
        or (dtype is np.float64 and p.values[0].name not in KERAS_RULES)
        if library_reference(p.values[0]) is None
    ]


@pytest.mark.parametrize("rule, name, cfg, dtype, tol", _cases())
def test_backends_agree(rule, name, cfg, dtype, tol):
    params0, grads = problem(STEPS, dtype)
    ref_params, ref_state = run("numpy", rule, cfg, params0, grads)
    for p in ref_params:
        assert p.dtype == dtype
    for backend in ("jax", "torch"):
        params, state = run(backend, rule, cfg, params0, grads)
        assert_close(params, ref_params, tol, f"{backend} params")
        for n in ref_state:
            assert (state[n] is None) == (ref_state[n] is None), (
                f"{backend}: state {n} exists in one backend only"
            )
            if ref_state[n] is not None:
                assert_close(state[n], ref_state[n], tol, f"{backend} state {n}")


def _schedule_cases() -> list:
    """The configurations whose rule no reference library checks with a schedule: where one does
    (test_reference_libraries.py: Keras's rules, and the rules named after torch.optim or optax), every
    backend equals it to 1e-12 with the same varying rate, so they agree with one another already."""
    from references import KERAS_RULES, library_reference

    return [
        p
        for p in rule_configs()
        if p.values[0].name not in KERAS_RULES and library_reference(p.values[0]) is None
    ]


@pytest.mark.parametrize("rule, name, cfg", _schedule_cases())
def test_backends_agree_with_a_schedule(rule, name, cfg):
    params0, grads = problem(STEPS)
    schedule = varying_lr(cfg.get("learning_rate", rule.hypers["learning_rate"].default))
    ref_params, _ = run("numpy", rule, cfg, params0, grads, schedule)
    const_params, _ = run("numpy", rule, cfg, params0, grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(ref_params, const_params)) > 0, (
        "the schedule had no effect"
    )
    for backend in ("jax", "torch"):
        params, _ = run(backend, rule, cfg, params0, grads, schedule)
        assert_close(params, ref_params, 1e-12, f"{backend} params")
