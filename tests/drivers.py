"""Run any generated optimizer on fixed gradient sequences, the same way in every backend.

``run(backend, rule, hypers, params0, grads)`` returns the final parameters and
state as NumPy arrays: ``(params, {state name: [array per tensor]})``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

BACKENDS = ("numpy", "jax", "torch")


def objective(k: int) -> float:
    """The objective's value the tests give at step ``k`` (0-based) to a rule that reads it: positive, up
    and down (1 +- 0.8), so that its gap to an ``f_min`` of 0.5 changes sign."""
    return 1.0 + 0.8 * math.cos(0.7 * k)


def loss_kwargs(rule, k: int) -> dict:
    """``{"value": objective(k)}`` for a rule that reads the objective's value (``Rule.reads_loss``: its
    step then takes ``value=``), else nothing."""
    return {"value": objective(k)} if rule.reads_loss else {}


# tensors of ranks 0 to 4 whose gradients have very different norms; the last one's first gradient is all zeros
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (2, 2, 3, 2), (3, 3)]
SCALES = [1.0, 1e-3, 1e3, 1.0, 10.0, 1.0]


def problem(steps: int, dtype=np.float64, seed: int = 0, shapes=SHAPES, scales=SCALES, zero_first=True):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.normal(size=s), dtype=dtype) for s in shapes]
    grads = [
        [np.asarray(c * rng.normal(size=s), dtype=dtype) for s, c in zip(shapes, scales)]
        for _ in range(steps)
    ]
    if zero_first and steps:
        grads[0][-1] = np.zeros_like(grads[0][-1])
    return params, grads


@functools.lru_cache(maxsize=None)
def _stored_states(name: str) -> tuple:
    from cases import RULES, compiled

    return tuple((s.name, s.scope.name.lower()) for s in compiled(RULES[name]).states if s.persists)


def stored_states(rule):
    """(name, scope) of the states the compiled rule keeps between steps."""
    return list(_stored_states(rule.name))


def varying_lr(base: float):
    """A learning rate that changes every step: base * (1 + 0.8 sin(0.37 k)), k = 0, 1, 2, ..."""

    def schedule(k):
        import jax.numpy as jnp

        if isinstance(k, (int, np.integer)):
            return base * (1 + 0.8 * math.sin(0.37 * k))
        return base * (1 + 0.8 * jnp.sin(0.37 * k))

    return schedule


def run(backend: str, rule, hypers: dict, params0, grads, schedule=None, fused=None):
    """Final (params, {state: [array per tensor] (a one-element list for a global state) or None}).

    ``fused``: NumPy and torch only, the optimizers' ``fused`` option (not passed when None)."""
    hypers = dict(hypers) if fused is None else dict(hypers, fused=fused)
    stored = stored_states(rule)
    names = [n for n, _ in stored]
    is_global = {n for n, scope in stored if scope == "global"}
    if backend == "numpy":
        import optforge.generated.numpy as gen

        if schedule is not None:
            hypers["learning_rate"] = schedule
        opt = getattr(gen, rule.name)(**hypers)
        params = [p.copy() for p in params0]
        state = opt.init(params)
        for k, g in enumerate(grads):
            params, state = opt.step(params, [x.copy() for x in g], state, **loss_kwargs(rule, k))
        return params, {n: _np([getattr(state, n)] if n in is_global else getattr(state, n)) for n in names}
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
        for k, g in enumerate(grads):
            updates, state = update([jnp.asarray(x) for x in g], state, params, **loss_kwargs(rule, k))
            params = optax.apply_updates(params, updates)
        return [np.asarray(p) for p in params], {
            n: _np([getattr(state, n)] if n in is_global else getattr(state, n)) for n in names
        }
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
            opt.step(**loss_kwargs(rule, k))
        state = {}
        for n in names:
            if n in is_global:
                state[n] = [np.asarray(opt.param_groups[0][n])]
            else:
                values = [opt.state[p][n].numpy() if n in opt.state[p] else None for p in params]
                state[n] = None if values[0] is None else values
        return [p.detach().numpy() for p in params], state
    raise ValueError(backend)


def _np(x):
    if x is None:
        return None
    return [np.asarray(v) for v in x]


def rel_error(a, b) -> float:
    """max |a - b| / max |b| over the finite entries (0 when both are exactly equal)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    a, b = a[np.isfinite(b)], b[np.isfinite(b)]
    if a.size == 0 or np.array_equal(a, b):
        return 0.0
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


def assert_close(got, want, tol: float, what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), f"{what}[{i}]: non-finite in one only"
        err = rel_error(a, b)
        assert err <= tol, f"{what}[{i}] (shape {np.shape(b)}): relative error {err:.3g} > {tol:g}"
