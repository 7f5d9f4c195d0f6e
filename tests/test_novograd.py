"""NovoGrad: the flavours against optax and against literal transcriptions of their definitions."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from cases import RULES
from drivers import BACKENDS, assert_close, loss_kwargs, problem, run, varying_lr

STEPS = 100


# --------------------------------------------------------------------------------------
# OptaxNovoGrad against optax.novograd


# the rule's own configurations (default, eps_root_wd) are checked against optax.novograd in every backend
# and fused path by test_reference_libraries.py (a rule named after its library); here one more
@pytest.mark.parametrize(
    "cfg", [dict(learning_rate=0.003, b1=0.5, eps=1e-3, eps_root=1e-2, weight_decay=0.3)], ids=["strong"]
)
@pytest.mark.parametrize("scheduled", [False, True], ids=["constant_lr", "schedule"])
def test_optax_novograd_matches_optax(cfg, scheduled):
    import jax
    import jax.numpy as jnp
    import optax

    rule = RULES["OptaxNovoGrad"]
    params0, grads = problem(STEPS)
    schedule = varying_lr(cfg["learning_rate"]) if scheduled else None
    kw = {k: v for k, v in cfg.items() if k != "learning_rate"}
    tx = optax.novograd(learning_rate=schedule or cfg["learning_rate"], **kw)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    update = jax.jit(tx.update)  # as optax is run (eagerly, its steps took most of this test's time)
    for g in grads:
        updates, state = update([jnp.asarray(x) for x in g], state, params)
        params = optax.apply_updates(params, updates)
    want = [np.asarray(p) for p in params]
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads, schedule)
        assert_close(got, want, 1e-12, f"{backend} vs optax.novograd")


def test_optax_doctest_prints_the_same_objective_values_in_every_backend():
    """Seed page 001's doctest: five steps on sum(x**2) from [1, 2, 3] with learning rate 0.003."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from optforge.generated.jax import optax_novograd
    from optforge.generated.numpy import OptaxNovoGrad as NumpyNovoGrad
    from optforge.generated.torch import OptaxNovoGrad as TorchNovoGrad

    page = ["1.40E+01", "1.39E+01", "1.39E+01", "1.38E+01", "1.37E+01"]  # printed on seed page 001

    def f(x):
        return float((x**2).sum())

    out = {}
    solver = optax_novograd(learning_rate=0.003)
    params = jnp.array([1.0, 2.0, 3.0], dtype=jnp.float32)
    state = solver.init(params)
    printed = []
    for _ in range(5):
        grad = jax.grad(lambda x: jnp.sum(x**2))(params)
        updates, state = solver.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        printed.append(f"{f(np.asarray(params)):.2E}")
    out["jax"] = printed

    opt = NumpyNovoGrad(learning_rate=0.003)
    x = [np.array([1.0, 2.0, 3.0], dtype=np.float32)]
    st = opt.init(x)
    printed = []
    for _ in range(5):
        x, st = opt.step(x, [2 * x[0]], st)
        printed.append(f"{f(x[0]):.2E}")
    out["numpy"] = printed

    xt = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    topt = TorchNovoGrad([xt], lr=0.003)
    printed = []
    for _ in range(5):
        topt.zero_grad()
        (xt**2).sum().backward()
        topt.step()
        printed.append(f"{f(xt.detach().numpy()):.2E}")
    out["torch"] = printed
    assert out == {"jax": page, "numpy": page, "torch": page}


# --------------------------------------------------------------------------------------
# NovoGrad (seed page 000) against a literal transcription of the page


def page_000_novograd(params0, grads, lr, beta1, beta2, epsilon, weight_decay, grad_averaging, use_nesterov):
    """Seed page 000 as written (learning rate inside the momentum, w <- w - m), v started at the first
    non-zero ||g||^2 (the class's v == 0 test); Nesterov as TF's MomentumOptimizer: w -= lr*u + momentum*m."""
    w = [p.copy() for p in params0]
    m = [np.zeros_like(p) for p in params0]
    v = [0.0 for _ in params0]
    for gs in grads:
        for i, g in enumerate(gs):
            s = float(np.sum(g * g))
            v[i] = s if v[i] == 0 else beta2 * v[i] + (1 - beta2) * s
            u = g / math.sqrt(v[i] + epsilon)
            if weight_decay > 0:
                u = u + weight_decay * w[i]
            if grad_averaging:
                u = (1 - beta1) * u
            m[i] = beta1 * m[i] + lr * u
            if use_nesterov:
                w[i] = w[i] - (lr * u + beta1 * m[i])
            else:
                w[i] = w[i] - m[i]
    return w


@pytest.mark.parametrize(
    "grad_averaging, use_nesterov, weight_decay",
    list(itertools.product([False, True], [False, True], [0.0, 0.05])),
)
def test_novograd_matches_seed_page_000(grad_averaging, use_nesterov, weight_decay):
    cfg = dict(
        learning_rate=0.01,
        beta1=0.9,
        beta2=0.5,
        epsilon=1e-6,
        weight_decay=weight_decay,
        grad_averaging=grad_averaging,
        use_nesterov=use_nesterov,
    )
    params0, grads = problem(STEPS)
    want = page_000_novograd(
        params0, grads, **{"lr" if k == "learning_rate" else k: v for k, v in cfg.items()}
    )
    for backend in BACKENDS:
        got, _ = run(backend, RULES["NovoGrad"], cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} NovoGrad vs seed page 000")


def test_novograd_tf1_graph_mode_normalises_by_the_current_gradient():
    """REFERENCE_RULES 1.2: in TF1 graph mode v_t = ||g_t||^2 (the EMA variable stays 0)."""
    params0, grads = problem(STEPS)
    w = [p.copy() for p in params0]
    m = [np.zeros_like(p) for p in params0]
    for gs in grads:
        for i, g in enumerate(gs):
            u = g / math.sqrt(float(np.sum(g * g)) + 1e-8)
            m[i] = 0.95 * m[i] + u
            w[i] = w[i] - 0.01 * m[i]
    for backend in BACKENDS:
        got, state = run(backend, RULES["NovoGradTF1"], dict(learning_rate=0.01), params0, grads)
        assert_close(got, w, 1e-12, f"{backend} NovoGradTF1")
        stored = {name for name, value in state.items() if value is not None}
        assert stored == {"m"}, f"{backend}: the TF1 variant stores {sorted(stored)}; v must not be stored"


# --------------------------------------------------------------------------------------
# memory: one tensor per parameter plus one scalar per tensor


def _count_state_elements(backend: str, rule_name: str, params0):
    import jax.numpy as jnp
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    rule = RULES[rule_name]
    if backend == "numpy":
        state = getattr(gn, rule.name)(learning_rate=0.01).init([p.copy() for p in params0])
        total = 0
        for field in state._fields[1:]:  # after the step count
            value = getattr(state, field)
            total += 1 if isinstance(value, float) else sum(np.asarray(x).size for x in (value or []))
        return total
    if backend == "jax":
        import jax

        state = getattr(gj, rule.module)(learning_rate=0.01).init([jnp.asarray(p) for p in params0])
        return sum(x.size for x in jax.tree.leaves(state)) - 1  # minus the step count
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = getattr(gt, rule.name)(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return sum(v.numel() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule_name", ["NovoGrad", "OptaxNovoGrad"])
def test_novograd_state_is_one_tensor_per_parameter_plus_one_scalar_per_tensor(backend, rule_name):
    params0, _ = problem(1)
    n_elements = sum(p.size for p in params0)
    assert _count_state_elements(backend, rule_name, params0) == n_elements + len(params0)
    assert _count_state_elements(backend, "Nadam", params0) == 2 * n_elements + (
        0 if backend == "torch" else 1
    )


# --------------------------------------------------------------------------------------
# no data-dependent branch in the JAX step; Nadam's product is global


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_jax_step_has_no_cond(rule):
    import jax
    import jax.numpy as jnp

    import optforge.generated.jax as gj

    params0, grads = problem(1)
    cfg = rule.configs["default"]
    tx = getattr(gj, rule.module)(**cfg)
    params = [jnp.asarray(p) for p in params0]
    jaxpr = str(
        jax.make_jaxpr(functools.partial(tx.update, **loss_kwargs(rule, 0)))(
            [jnp.asarray(g) for g in grads[0]], tx.init(params), params
        )
    )
    assert "cond[" not in jaxpr and "while[" not in jaxpr


def test_nadam_product_is_one_scalar_per_optimizer_not_per_parameter():
    import jax.numpy as jnp
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    params0, grads = problem(3)
    state = gn.Nadam().init([p.copy() for p in params0])
    assert isinstance(state.u_product, float)
    jstate = gj.nadam().init([jnp.asarray(p).astype(jnp.bfloat16) for p in params0])
    assert jstate.u_product.shape == () and jstate.u_product.dtype != jnp.bfloat16
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = gt.Nadam(params)
    for g in grads:
        for p, x in zip(params, g):
            p.grad = torch.tensor(x)
        opt.step()
    assert all("u_product" not in s for s in opt.state.values())
    want = 1.0
    for t in (1, 2, 3):
        want *= 0.9 * (1 - 0.5 * 0.96**t)
    assert opt.param_groups[0]["u_product"] == pytest.approx(want, rel=1e-15)
