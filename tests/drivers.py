"""Run any generated optimizer on fixed gradient sequences, the same way in every backend.

``run(backend, rule, hypers, params0, grads)`` returns the final parameters and
state as NumPy arrays: ``(params, {state name: [array per tensor]})``.
"""

from __future__ import annotations

import math

import numpy as np

BACKENDS = ("numpy", "jax", "torch")

# tensors of ranks 0 to 4 whose gradients have very different norms
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (2, 2, 3, 2)]
SCALES = [1.0, 1e-3, 1e3, 1.0, 10.0]


def problem(steps: int, dtype=np.float64, seed: int = 0, shapes=SHAPES, scales=SCALES):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.normal(size=s), dtype=dtype) for s in shapes]
    grads = [[np.asarray(c * rng.normal(size=s), dtype=dtype) for s, c in zip(shapes, scales)] for _ in range(steps)]
    return params, grads


def varying_lr(base: float):
    """A learning rate that changes every step: base * (1 + 0.8 sin(0.37 k)), k = 0, 1, 2, ..."""

    def schedule(k):
        import jax.numpy as jnp

        if isinstance(k, (int, np.integer)):
            return base * (1 + 0.8 * math.sin(0.37 * k))
        return base * (1 + 0.8 * jnp.sin(0.37 * k))

    return schedule


def run(backend: str, rule, hypers: dict, params0, grads, schedule=None):
    hypers = dict(hypers)
    names = list(rule.states)
    if backend == "numpy":
        import optforge.generated.numpy as gen

        if schedule is not None:
            hypers["learning_rate"] = schedule
        opt = getattr(gen, rule.name)(**hypers)
        params = [p.copy() for p in params0]
        state = opt.init(params)
        for g in grads:
            params, state = opt.step(params, [x.copy() for x in g], state)
        return params, {n: _np(getattr(state, n)) for n in names}
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import optax

        import optforge.generated.jax as gen

        if schedule is not None:
            hypers["learning_rate"] = schedule
        tx = getattr(gen, rule.module)(**hypers)
        params = [jnp.asarray(p) for p in params0]
        state = tx.init(params)
        update = jax.jit(tx.update)
        for g in grads:
            updates, state = update([jnp.asarray(x) for x in g], state, params)
            params = optax.apply_updates(params, updates)
        return [np.asarray(p) for p in params], {n: _np(getattr(state, n)) for n in names}
    if backend == "torch":
        import torch

        import optforge.generated.torch as gen

        if "learning_rate" in hypers:
            hypers["lr"] = hypers.pop("learning_rate")
        params = [torch.tensor(p, requires_grad=True) for p in params0]
        opt = getattr(gen, rule.name)(params, **hypers)
        for k, g in enumerate(grads):
            if schedule is not None:
                for group in opt.param_groups:
                    group["lr"] = schedule(k)
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()
        state = {n: [opt.state[p][n].numpy() if n in opt.state[p] else None for p in params] for n in names}
        return [p.detach().numpy() for p in params], {n: (None if v[0] is None else v) for n, v in state.items()}
    raise ValueError(backend)


def _np(x):
    if x is None:
        return None
    return [np.asarray(v) for v in x]


def rel_error(a, b) -> float:
    """max |a - b| / max |b| (0 when both are exactly equal)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0 or np.array_equal(a, b):
        return 0.0
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


def assert_close(got, want, tol: float, what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        err = rel_error(a, b)
        assert np.all(np.isfinite(a)) == np.all(np.isfinite(b)), f"{what}[{i}]: finiteness differs"
        assert err <= tol, f"{what}[{i}] (shape {np.shape(b)}): relative error {err:.3g} > {tol:g}"
