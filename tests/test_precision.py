"""The precision policy and non-finite gradients, the same in every backend."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from cases import MACHINERY, RULES, skip_without_kernels
from drivers import BACKENDS, problem, run, stored_states

LOW = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _run_low(backend, rule, cfg, dtype, steps=5):
    """Run with low-precision params; returns (params, {state: [arrays]}) in their own dtypes."""
    import jax.numpy as jnp
    import optax
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    params0, grads = problem(steps, zero_first=False)
    params0 = [p.astype(dtype) for p in params0]
    grads = [[x.astype(dtype) for x in g] for g in grads]
    names = [n for n, scope in stored_states(rule) if scope == "element"]  # from the compiled rule
    if backend == "numpy":
        opt = getattr(gn, rule.name)(**cfg)
        p = [x.copy() for x in params0]
        st = opt.init(p)
        for g in grads:
            p, st = opt.step(p, g, st)
        return p, {n: getattr(st, n) for n in names if getattr(st, n, None) is not None}
    if backend == "jax":
        tx = getattr(gj, rule.module)(**cfg)
        p = [jnp.asarray(x) for x in params0]
        st = tx.init(p)
        for g in grads:
            u, st = tx.update([jnp.asarray(x) for x in g], st, p)
            p = optax.apply_updates(p, u)
        return [np.asarray(x) for x in p], {
            n: getattr(st, n) for n in names if getattr(st, n, None) is not None
        }
    tdt = {np.float16: torch.float16, ml_dtypes.bfloat16: torch.bfloat16}[dtype]
    kw = {("lr" if k == "learning_rate" else k): v for k, v in cfg.items()}
    tp = [torch.tensor(x.astype(np.float32)).to(tdt).requires_grad_() for x in params0]
    opt = getattr(gt, rule.name)(tp, **kw)
    for g in grads:
        for q, x in zip(tp, g):
            q.grad = torch.tensor(x.astype(np.float32)).to(tdt)
        opt.step()
    state = {n: [opt.state[q][n] for q in tp] for n in names if n in opt.state[tp[0]]}
    return [q.detach() for q in tp], state


@pytest.mark.parametrize("dtype", list(LOW), ids=list(LOW))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", MACHINERY, ids=[r.name for r in MACHINERY])
def test_low_precision_params_keep_float32_state(rule, backend, dtype):
    cfg = dict(rule.configs.get("momentum", rule.configs["default"]))  # SGD stores nothing without momentum
    params, state = _run_low(backend, rule, cfg, LOW[dtype])
    for p in params:
        assert str(p.dtype).endswith(dtype), f"the parameter came back as {p.dtype}"
    assert state, "no state to check"
    for name, values in state.items():
        for v in values:
            assert str(v.dtype).endswith("float32"), f"state {name} is {v.dtype}, not float32"


def test_low_precision_results_track_float32():
    """bfloat16 parameters updated with float32 state stay within bfloat16 rounding of the float32 run."""
    rule = RULES["Adamax"]
    cfg = {"learning_rate": 0.05}
    params0, grads = problem(20, zero_first=False)
    want, _ = run(
        "numpy",
        rule,
        cfg,
        [p.astype(np.float32) for p in params0],
        [[x.astype(np.float32) for x in g] for g in grads],
    )
    got, _ = _run_low("numpy", rule, cfg, ml_dtypes.bfloat16, steps=20)
    for a, b in zip(got, want):
        scale = max(float(np.max(np.abs(b))), 1.0)
        assert float(np.max(np.abs(a.astype(np.float32) - b))) <= 20 * 2**-8 * scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_complex_parameters_are_a_clear_error(backend):
    import jax.numpy as jnp
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    for bad in (np.arange(3), np.ones(3, np.complex64)):
        with pytest.raises(TypeError, match="real floating"):
            if backend == "numpy":
                gn.Adamax().init([bad])
            elif backend == "jax":
                gj.adamax().init([jnp.asarray(bad)])
            else:
                gt.Adamax([torch.tensor(bad)])


# --------------------------------------------------------------------------------------
# non-finite gradients


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", MACHINERY, ids=[r.name for r in MACHINERY])
def test_a_nan_gradient_stays_in_its_tensor(rule, backend):
    """A NaN in one tensor's gradient does not reach the other tensors (no reduction over all tensors here)."""
    cfg = dict(rule.configs["default"])
    params0, grads = problem(5, zero_first=False)
    poisoned = [[x.copy() for x in g] for g in grads]
    poisoned[2][0] = np.full_like(poisoned[2][0], math.nan)
    clean, clean_state = run(backend, rule, cfg, params0, grads)
    got, state = run(backend, rule, cfg, params0, poisoned)
    # the poisoned tensor shows the NaN, in its parameter or its state (optax's Adagrad steps by 0 where its
    # accumulator is not above 0, a NaN included, as optax.adagrad does: its parameter stays finite)
    shown = [got[0]] + [v[0] for v in state.values() if v is not None and len(v) == len(got)]
    assert not all(np.all(np.isfinite(x)) for x in shown), "the poisoned tensor should show the NaN"
    for i in range(1, len(got)):
        assert np.array_equal(got[i], clean[i]), f"tensor {i} changed because of another tensor's NaN"
        for name, values in state.items():
            if values is not None and len(values) == len(got):
                assert np.array_equal(values[i], clean_state[name][i]), f"state {name}[{i}] was corrupted"


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_clipnorm_spreads_a_nan_to_every_tensor_as_its_maths_says(backend):
    rule = RULES["SGD"]
    params0, grads = problem(3, zero_first=False)
    grads[1][0] = np.full_like(grads[1][0], math.nan)
    got, _ = run(backend, rule, {"learning_rate": 0.1, "global_clipnorm": 1.0}, params0, grads)
    assert all(not np.all(np.isfinite(p)) for p in got), "the global norm is NaN, so every update is"


def _run_wide_state(backend, rule, cfg, dtype, state_dtype, fused, steps=6):
    """float32 (or float64) params and grads, the state in ``state_dtype``: (params, [state arrays])."""
    import torch

    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    params0, grads = problem(steps, zero_first=False)
    params0 = [p.astype(dtype) for p in params0]
    grads = [[x.astype(dtype) for x in g] for g in grads]
    if backend == "numpy":
        opt = getattr(gn, rule.name)(**cfg, state_dtype=state_dtype, fused=fused)
        p = [x.copy() for x in params0]
        st = opt.init(p)
        for g in grads:
            p, st = opt.step(p, g, st)
        states = [a for v in st[1:] if isinstance(v, list) for a in v]
        return p, states
    kw = {("lr" if k == "learning_rate" else k): v for k, v in cfg.items()}
    tp = [torch.tensor(x).requires_grad_() for x in params0]
    opt = getattr(gt, rule.name)(
        tp, **kw, state_dtype=getattr(torch, np.dtype(state_dtype).name), fused=fused
    )
    for g in grads:
        for q, x in zip(tp, g):
            q.grad = torch.tensor(x)
        opt.step()
    states = [v.numpy() for q in tp for v in opt.state[q].values() if isinstance(v, torch.Tensor)]
    return [q.detach().numpy() for q in tp], states


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("rule", MACHINERY, ids=[r.name for r in MACHINERY])
def test_float32_params_with_float64_state_track_the_float64_run(rule, backend, fused):
    """state_dtype wider than the parameters: the element-wise temporaries follow the widest dtype, with
    every option whose maths is element-wise (clipvalue, EMA with overwrite, loss scaling, accumulation)."""
    skip_without_kernels(rule, fused)
    cfg = {
        **rule.configs.get("momentum", rule.configs["default"]),
        "clipvalue": 0.3,
        "use_ema": True,
        "ema_overwrite_frequency": 4,
        "loss_scale_factor": 2.0,
    }
    params, states = _run_wide_state(backend, rule, cfg, np.float32, np.float64, fused)
    want_params, want_states = _run_wide_state(backend, rule, cfg, np.float64, np.float64, False)
    assert states and all(s.dtype == np.float64 for s in states), [s.dtype for s in states]
    assert len(states) == len(want_states)
    for got, want in zip(params, want_params):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
