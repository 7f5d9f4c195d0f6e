"""Compile a throwaway rule and import its generated modules from a temporary folder (``optforge.load``)."""

from __future__ import annotations

import pathlib

from drivers import loss_kwargs

import optforge


def load(rule, folder: pathlib.Path) -> dict:
    """{backend: module} for a rule that is not in the registry (the verifier between the passes)."""
    loaded = optforge.load(rule, folder, check_between_passes=True)
    names = ("numpy", "jax", "torch", "fused", "triton")
    return {name: loaded[name] for name in names if name not in loaded.refused}


def steps(mods: dict, rule, params0: list, grads: list, path: str, **hypers) -> list:
    """The parameters (NumPy arrays) after the steps of a loaded rule's optimizer in float64: ``path`` is
    "numpy", "numpy fused", "jax" (under ``jax.jit``), "torch", "torch fused" (Numba on the CPU) or
    "torch triton" (Triton's interpreter); ``hypers`` by the rule's names (torch's ``lr`` for its rate)."""
    import numpy as np

    backend, _, kind = path.partition(" ")
    if backend == "numpy":
        opt = getattr(mods["numpy"], rule.name)(**hypers, fused=kind == "fused")
        params = [x.copy() for x in params0]
        state = opt.init(params)
        for k, g in enumerate(grads):
            params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
        return params
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import optax

        tx = getattr(mods["jax"], rule.module)(**hypers)
        params = [jnp.asarray(x) for x in params0]
        state = tx.init(params)
        update = jax.jit(tx.update)
        for k, g in enumerate(grads):
            updates, state = update([jnp.asarray(x) for x in g], state, params, **loss_kwargs(rule, k))
            params = optax.apply_updates(params, updates)
        return [np.asarray(x) for x in params]
    import torch

    params = [torch.tensor(x, requires_grad=True) for x in params0]
    fused = {"": False, "fused": True, "triton": "triton"}[kind]
    opt = getattr(mods["torch"], rule.name)(params, **hypers, fused=fused)
    for k, g in enumerate(grads):
        for p, x in zip(params, g):
            p.grad = torch.tensor(x)
        opt.step(**loss_kwargs(rule, k))
    return [p.detach().numpy() for p in params]
