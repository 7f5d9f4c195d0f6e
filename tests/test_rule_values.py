"""Values a user's rule reads (issue 19, defects 4, 5 and 8), in every backend against literal NumPy.

4. A state may start at the parameter's value (``rule.state("z", w)``): schedule-free SGD's z and x
   sequences, Lookahead's slow weights. NumPy and JAX create it in ``init(params)``, torch at a parameter's
   first step, before its update; it survives a torch ``state_dict`` round trip.
5. JAX's step is an int32 array: ``(t - 1) / N``, ``1 / t``, ``sqrt(t)`` were computed in float32 even
   under x64 (1e-6 relative after 50 steps). Integers read as reals are converted first
   (``compiler/passes/integers.py``), as a Python int would promote.
8. The learning rate of the previous step, ``eta_{t-1}``: a global state assigned ``lr`` by the rule's last
   equation (the README's "Writing a rule"); it follows a float, a schedule and torch's ``group["lr"]``.

Each rule runs 50 steps in float64, with a constant learning rate and with a schedule, to 1e-12.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from drivers import assert_close, problem, varying_lr
from rulekit import load

from optforge.compiler.dsl import Given, Rule, g, idiv, imod, sqrt, t, w
from optforge.compiler.errors import RuleError
from optforge.compiler.pipeline import compile_rule
from optforge.rules._keras_options import keras_options

LR = 0.05
STEPS = 50
WARMUP = 7


def starts_at_w():
    """Schedule-free SGD (Defazio et al. 2024): z_1 = x_1 = w_1; the gradient is taken at y = w."""
    R = Rule("StartsAtW", title="t")
    lr = R.learning_rate(LR)
    beta = R.hyper("beta", 0.9, "[0, 1)", "interpolation")
    z = R.state("z", w, "the SGD sequence")
    x = R.state("x", w, "the average")
    a = R.state("a", beta * w + 1, "an initial value computed from w")
    c = R.let("c", 1 / t, "averaging weight")
    R.assign(z, z - lr * g, "SGD step")
    R.assign(x, (1 - c) * x + c * z, "average")
    R.assign(a, 0.5 * a + g, "a")
    R.assign(w, (1 - beta) * z + beta * x - 0.01 * lr * a, "where the next gradient is taken")

    def oracle(p, gs, lrs):
        beta = 0.9
        z, x, a, y = p.copy(), p.copy(), beta * p + 1, p.copy()
        for k, (gk, lk) in enumerate(zip(gs, lrs), start=1):
            z = z - lk * gk
            x = (1 - 1 / k) * x + (1 / k) * z
            a = 0.5 * a + gk
            y = (1 - beta) * z + beta * x - 0.01 * lk * a
        return y

    return R, oracle, {}


def integer_steps():
    """Integer step values read as reals: (t - 1) / N, 1 / t, sqrt(t), imod(t, N) / N, idiv(t, 3) / 7."""
    R = Rule("IntegerSteps", title="t")
    lr = R.learning_rate(LR)
    warmup = R.option("warmup", "[1, inf)", "warm-up steps", integer=True)
    scale = (t - 1) / warmup + 1 / t + sqrt(t) / 10 + imod(t, warmup) / warmup + idiv(t, 3) / 7 + t**-1.5
    R.assign(w, w - lr * g * scale, when=Given(warmup))
    R.assign(w, w - lr * g / t, when=~Given(warmup))

    def oracle(p, gs, lrs):
        p = p.copy()
        for k, (gk, lk) in enumerate(zip(gs, lrs), start=1):
            s = (k - 1) / WARMUP + 1 / k + math.sqrt(k) / 10 + (k % WARMUP) / WARMUP + (k // 3) / 7 + k**-1.5
            p = p - lk * gk * s
        return p

    return R, oracle, {"warmup": WARMUP}


def previous_learning_rate():
    """eta_{t-1}: a trapezoid step (eta_t + eta_{t-1}) / 2 and the sum of the earlier learning rates."""
    R = Rule("PreviousLearningRate", title="t")
    lr = R.learning_rate(LR)
    lr_prev = R.state(
        "lr_prev", 0, "the learning rate of the previous step", scope="global", latex=r"\eta_{t-1}"
    )
    total = R.state("total", 0, "sum of the learning rates before this step", scope="global")
    m = R.state("m", 0, "momentum")
    R.assign(total, total + lr_prev, "sum of the earlier learning rates")
    R.assign(m, 0.5 * m + g, "momentum")
    R.assign(w, w - (lr + lr_prev) / 2 * m / (1 + total), "trapezoid step")
    R.assign(lr_prev, lr, "kept for the next step")

    def oracle(p, gs, lrs):
        p, m, prev, total = p.copy(), np.zeros_like(p), 0.0, 0.0
        for gk, lk in zip(gs, lrs):
            total = total + prev
            m = 0.5 * m + gk
            p = p - (lk + prev) / 2 * m / (1 + total)
            prev = lk
        return p

    return R, oracle, {}


RULES = [starts_at_w, integer_steps, previous_learning_rate]
RUNS = [("numpy", False), ("numpy", True), ("torch", False), ("torch", True), ("jax", None)]


def _torch_opt(modules, rule, ps, hypers, fused):
    return getattr(modules["torch"], rule.name)(ps, lr=LR, fused=fused, **hypers)


def _run(modules, rule, backend, fused, hypers, params, grads, schedule, stop=None):
    """Final parameters after the steps; ``stop``: torch only, a state_dict round trip after that many."""
    lr = schedule if schedule is not None else LR
    if backend == "numpy":
        opt = getattr(modules["numpy"], rule.name)(learning_rate=lr, fused=fused, **hypers)
        ps = [p.copy() for p in params]
        state = opt.init(ps)
        for gs in grads:
            ps, state = opt.step(ps, [x.copy() for x in gs], state)
        return ps
    if backend == "torch":
        import torch

        ps = [torch.tensor(p, requires_grad=True) for p in params]
        opt = _torch_opt(modules, rule, ps, hypers, fused)
        for k, gs in enumerate(grads):
            if k == stop:  # a fresh optimizer resumes from the checkpoint
                saved = copy.deepcopy(opt.state_dict())
                opt = _torch_opt(modules, rule, ps, hypers, fused)
                opt.load_state_dict(saved)
            if schedule is not None:
                for group in opt.param_groups:
                    group["lr"] = schedule(k)
            for p, x in zip(ps, gs):
                p.grad = torch.tensor(x)
            opt.step()
        return [p.detach().numpy() for p in ps]
    import jax
    import optax

    tx = getattr(modules["jax"], rule.module)(learning_rate=lr, **hypers)
    ps = [jax.numpy.asarray(p) for p in params]
    state = tx.init(ps)
    update = jax.jit(tx.update)
    for gs in grads:
        updates, state = update([jax.numpy.asarray(x) for x in gs], state, ps)
        ps = optax.apply_updates(ps, updates)
    return [np.asarray(p) for p in ps]


@pytest.fixture(scope="module", params=RULES, ids=lambda f: f.__name__)
def compiled(request, tmp_path_factory):
    rule, oracle, hypers = request.param()
    rule = keras_options(rule)
    return rule, oracle, hypers, load(rule, tmp_path_factory.mktemp(rule.module))


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant-lr", "schedule"])
@pytest.mark.parametrize("backend, fused", RUNS, ids=[f"{b}{'-fused' if f else ''}" for b, f in RUNS])
def test_every_backend_follows_the_literal_transcription(compiled, backend, fused, scheduled):
    rule, oracle, hypers, modules = compiled
    params, grads = problem(STEPS)
    schedule = varying_lr(LR) if scheduled else None
    lrs = [schedule(k) if scheduled else LR for k in range(STEPS)]
    want = [oracle(p, [gs[i] for gs in grads], lrs) for i, p in enumerate(params)]
    got = _run(modules, rule, backend, fused, hypers, params, grads, schedule)
    assert_close(got, want, 1e-12, f"{rule.name} ({backend}{', fused' if fused else ''})")


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_torch_checkpoint_keeps_state_that_started_at_w(tmp_path, fused):
    """The states made from w (and the previous learning rate) resume bit for bit from a state_dict."""
    for make in (starts_at_w, previous_learning_rate):
        rule, _, hypers = make()
        rule = keras_options(rule)
        modules = load(rule, tmp_path)
        params, grads = problem(12)
        schedule = varying_lr(LR)
        whole = _run(modules, rule, "torch", fused, hypers, params, grads, schedule)
        resumed = _run(modules, rule, "torch", fused, hypers, params, grads, schedule, stop=5)
        for a, b in zip(resumed, whole):
            assert np.array_equal(a, b), rule.name


def test_state_from_w_is_a_copy_not_a_view(tmp_path):
    """NumPy updates w in place: a state that starts at w must not be the same buffer."""
    rule, _, _ = starts_at_w()
    modules = load(rule, tmp_path)
    params, _ = problem(1)
    opt = modules["numpy"].StartsAtW()
    state = opt.init(params)
    for p, z, x in zip(params, state.z, state.x):
        assert not np.shares_memory(p, z) and not np.shares_memory(p, x) and not np.shares_memory(z, x)


# -- what an initial value may not read --------------------------------------------------------------


@pytest.mark.parametrize("bad", ["g", "t", "learning_rate"])
def test_an_initial_value_reading_more_than_w_and_hyperparameters_is_an_error(bad):
    R = Rule("BadInit", title="t")
    lr = R.learning_rate(LR)
    m = R.state("m", {"g": g, "t": t, "learning_rate": lr}[bad] + w, "m")
    R.assign(m, m + g)
    R.assign(w, w - lr * m)
    with pytest.raises(RuleError, match=rf"initial value of state 'm' is .*reads \['{bad}'\].*and w"):
        compile_rule(R)


def test_a_state_declared_per_tensor_cannot_start_at_w():
    R = Rule("NarrowInit", title="t")
    lr = R.learning_rate(LR)
    v = R.state("v", w, "v", scope="tensor")
    R.assign(v, v + 1)
    R.assign(w, w - lr * v * g)
    with pytest.raises(
        RuleError, match=r"state 'v' is declared per tensor but its initial value `w` is per element"
    ):
        compile_rule(R)


# -- integers read as reals, on the IR --------------------------------------------------------------


def test_run_time_integers_read_as_reals_are_marked_and_compared_ones_are_not():
    import sympy as sp

    from optforge.compiler.ir import AsFloat
    from optforge.compiler.passes.integers import promote

    n, N = sp.Symbol("n"), sp.Symbol("N")
    ints, stepped = {"n", "t", "N"}, {"n", "t"}
    assert promote((t - 1) / N, ints, stepped) == AsFloat(t - 1) / N
    assert promote(N / 3, ints, stepped) == N / 3  # Python ints: exact, nothing to convert
    cond = sp.Piecewise((1 / t, sp.Eq(imod(n, N), 0)), (0, True))
    assert promote(cond, ints, stepped) == sp.Piecewise((1 / AsFloat(t), sp.Eq(imod(n, N), 0)), (0, True))
    assert promote(idiv(n, N) / 2, ints, stepped) == AsFloat(idiv(n, N)) / 2
