"""SM3's cover of a tensor by its slices (``cover_max``, ``cover_min``; passes/shape.py's ``COVER``): for
each axis one value per index along it, the maximum over the slice, ``m + n`` values for an ``m x n``
matrix; read per element as the least of the slices through it. Checked against loops over every index
written here, in NumPy, JAX and torch; OptaxSm3 against optax.sm3 itself; a cover misused is a compile error
that names the equation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from drivers import assert_close
from rulekit import load, steps

from optforge.compiler.dsl import Rule, cover_max, cover_min, g, w
from optforge.compiler.errors import RuleError
from optforge.compiler.pipeline import compile_rule

SHAPES = [(), (4,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 3), (3, 0, 2), (0,)]


def cover_by_loops(x: np.ndarray) -> np.ndarray:
    """For each axis, for each index along it, the largest element whose index along that axis is it (0 for
    an empty slice of a tensor with no elements: runtime.common.cover_slices); a 0-d tensor: its one value.
    The vectors in axis order."""
    if x.ndim == 0:
        return x.reshape(1).copy()
    out = []
    for r, d in enumerate(x.shape):
        for k in range(d):
            found = [x[i] for i in itertools.product(*map(range, x.shape)) if i[r] == k]
            out.append(max(found) if found else 0.0)
    return np.array(out, dtype=x.dtype)


def least_by_loops(mu: np.ndarray, shape: tuple) -> np.ndarray:
    """For each element, the least of the cover's values of the slices through it."""
    if not shape:
        return mu.reshape(()).copy()
    starts = np.cumsum((0,) + shape[:-1])
    out = np.empty(shape, dtype=mu.dtype)
    for i in itertools.product(*map(range, shape)):
        out[i] = min(mu[starts[r] + k] for r, k in enumerate(i))
    return out


def frameworks():
    import jax.numpy as jnp
    import torch

    from optforge.runtime import jax_support, numpy_support, torch_support

    return {
        "numpy": (np.asarray, numpy_support, np.asarray),
        "jax": (jnp.asarray, jax_support, np.asarray),
        "torch": (torch.from_numpy, torch_support, lambda x: x.numpy()),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cover_max_and_cover_min_are_the_loops(shape):
    rng = np.random.default_rng(len(shape) + sum(shape))
    x = rng.normal(size=shape)
    want_cover = cover_by_loops(x)
    mu = rng.normal(size=want_cover.shape)
    want_least = least_by_loops(mu, shape)
    for name, (array, support, back) in frameworks().items():
        got = back(support.cover_max(array(x), array(x)))
        np.testing.assert_array_equal(got, want_cover, err_msg=f"{name} cover_max {shape}")
        got = back(support.cover_min(array(mu), array(x)))
        np.testing.assert_array_equal(got, want_least, err_msg=f"{name} cover_min {shape}")
        if name != "jax":  # into buffers, as the generated steps call them
            out = array(np.full(want_cover.shape, 7.0))
            support.cover_max(array(x), array(x), out=out)
            np.testing.assert_array_equal(back(out), want_cover, err_msg=f"{name} cover_max out= {shape}")
            out = array(np.full(shape, 7.0))
            support.cover_min(array(mu), array(x), out=out)
            np.testing.assert_array_equal(back(out), want_least, err_msg=f"{name} cover_min out= {shape}")


def adagrad_by_slices() -> Rule:
    """SM3-II without momentum, written as a user would."""
    r = Rule("SlicesAdagrad", title="SM3-II")
    lr = r.learning_rate(0.1)
    mu = r.state("mu", 0, "largest accumulator per slice")
    a = r.let("a", g**2 + cover_min(mu), "accumulator")
    r.assign(mu, cover_max(a), "slices")
    r.assign(w, w - lr * g / (a + 1e-8) ** 0.5, "update")
    return r


def test_a_rule_with_a_cover_runs_in_every_backend(tmp_path):
    rule = adagrad_by_slices()
    mods = load(rule, tmp_path)
    # the kernels take the tensors of rank 0 or 1 (a cover of the tensor itself), the plain path the others
    rng = np.random.default_rng(3)
    shapes = [(), (5,), (4, 3), (2, 3, 2)]
    params0 = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(5)]
    params = [p.copy() for p in params0]
    mus = [cover_by_loops(np.zeros(s)) * 0 for s in shapes]
    for gs in grads:
        for i, x in enumerate(gs):
            a = x**2 + least_by_loops(mus[i], shapes[i])
            mus[i] = cover_by_loops(a)
            params[i] = params[i] - 0.1 * x / np.sqrt(a + 1e-8)
    paths = ["numpy", "jax", "torch", "numpy fused", "torch fused"] + (
        ["torch triton"] if "triton" in mods else []
    )
    for path in paths:
        assert_close(steps(mods, rule, params0, grads, path), params, 1e-12, path)
    assert mods["fused"].TAKES.text == "rank <= 1"
    state = mods["numpy"].SlicesAdagrad().init([p.copy() for p in params0])
    assert [m.shape for m in state.mu] == [(1,), (5,), (7,), (7,)]  # m + n values of an m x n matrix


def test_optax_sm3_matches_optax_itself():
    """The library test (test_reference_libraries.py) compares with optax.sm3's own transforms, a schedule
    and 0-d tensors admitted; here with optax.sm3 as it is, where it runs (rank 1 and above, a number as
    its rate): float64, 30 steps, to 1e-12."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from optforge.generated.numpy.optax_sm3 import OptaxSm3
    from optforge.generated.torch.optax_sm3 import OptaxSm3 as TorchSm3

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(4)
    shapes = [(6,), (5, 3), (2, 3, 4)]
    params0 = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) * 10.0 ** rng.integers(-3, 3) for s in shapes] for _ in range(30)]
    tx = optax.sm3(0.05, momentum=0.8)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    for gs in grads:
        updates, state = tx.update([jnp.asarray(x) for x in gs], state, params)
        params = optax.apply_updates(params, updates)
    want = [np.asarray(p) for p in params]

    opt = OptaxSm3(learning_rate=0.05, momentum=0.8)
    ours = [p.copy() for p in params0]
    ours_state = opt.init(ours)
    for gs in grads:
        ours, ours_state = opt.step(ours, gs, ours_state)
    assert_close(ours, want, 1e-12, "numpy")
    ws = [torch.tensor(p, requires_grad=True) for p in params0]
    topt = TorchSm3(ws, lr=0.05, momentum=0.8)
    for gs in grads:
        for p, x in zip(ws, gs):
            p.grad = torch.from_numpy(x)
        topt.step()
    assert_close([p.detach().numpy() for p in ws], want, 1e-12, "torch")
    # the cover holds optax's vectors, laid end to end
    for mine, theirs in zip(ours_state.mu, state[0].mu):
        np.testing.assert_allclose(mine, np.concatenate([np.ravel(v) for v in theirs]), rtol=1e-12)


def _rule(body) -> Rule:
    r = Rule("BadCover", title="a cover misused")
    r.learning_rate(0.1)
    body(r)
    return r


def test_a_cover_misused_is_an_error_naming_the_equation():
    def per_element_read_as_cover(r):
        m = r.state("m", 0, "a per-element state")
        r.assign(m, m + g**2, "sum of squares")
        r.assign(w, w - 0.1 * g * cover_min(m), "update")

    def cover_added_to_elements(r):
        mu = r.state("mu", 0, "a cover")
        r.assign(mu, cover_max(g**2) + g, "slices plus the gradient")
        r.assign(w, w - 0.1 * g * cover_min(mu), "update")

    for body, said in (
        (per_element_read_as_cover, "takes a cover (a state assigned cover_max(...)); `m` is of shape m x n"),
        (cover_added_to_elements, "a cover (one vector per axis, from cover_max) and a value of shape m x n"),
    ):
        with pytest.raises(RuleError) as info:
            compile_rule(_rule(body))
        text = str(info.value)
        assert said in text, text
        assert "BadCover" in text and "equation" in text, text
