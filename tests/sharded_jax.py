"""Run one rule's JAX optimizer on parameters sharded over two host devices, and without sharding.

Run in a subprocess by ``tests/test_sharding.py`` (JAX reads ``XLA_FLAGS`` once, at import):
``python tests/sharded_jax.py RULE [RULE ...]`` prints one JSON object, by rule, with, per option set and
dtype, the largest
relative difference between the sharded and the unsharded run (parameters and state, after every step)
and the state leaves whose sharding differs from their parameter's.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
)

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

jax.config.update("jax_enable_x64", True)

#: (shape, how it is laid out over the mesh's axis "d"): sharded on dim 0, on dim 1, replicated, a scalar
LAYOUT = [((4, 3), P("d", None)), ((6,), P("d")), ((3, 4), P(None, "d")), ((2, 3, 4), P("d")), ((5,), P())]
SCALES = [1.0, 1e-3, 1e3, 10.0, 1.0]
#: options whose reductions cross the shards, and none
OPTION_SETS = {"none": {}, "clipnorm": {"clipnorm": 0.5}, "global_clipnorm": {"global_clipnorm": 0.5}}
STEPS = 20


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if np.array_equal(a, b, equal_nan=True):
        return 0.0
    scale = np.max(np.abs(b[np.isfinite(b)]), initial=0.0) or 1.0
    return float(np.max(np.abs(a - b)) / scale)


def trajectory(tx, params, grads, shard):
    """Parameters and state after each step; ``shard`` puts a leaf on its place on the mesh (or not)."""
    params = [shard(p, i) for i, p in enumerate(params)]
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        updates, state = update([shard(x, i) for i, x in enumerate(g)], state, params)
        params = optax.apply_updates(params, updates)
        out.append((params, state))
    return out


def misplaced(params, state, mesh) -> list[str]:
    """Per-element state leaves not laid out like their parameter (a state list holds one leaf per tensor)."""
    bad = []
    for name, value in state._asdict().items():
        if not isinstance(value, list) or len(value) != len(params):
            continue
        for i, (leaf, p) in enumerate(zip(value, params)):
            if getattr(leaf, "shape", None) == p.shape and p.ndim > 0:
                if not leaf.sharding.is_equivalent_to(p.sharding, p.ndim):
                    bad.append(f"{name}[{i}]: {leaf.sharding} (parameter: {p.sharding})")
    return bad


def _reduces(rule) -> bool:
    """Whether the rule reduces over a tensor or over all of them, options aside (``cases.features``)."""
    from cases import REDUCTIONS, features

    return bool(features(rule) & REDUCTIONS)


def main(rule_name: str) -> dict:
    from optforge.generated import jax as gen
    from optforge.rules import registry

    rule = registry()[rule_name]
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    own_reductions = _reduces(rule)
    rng = np.random.default_rng(0)
    result = {}
    for dtype in (np.float64, np.float32):
        params = [rng.normal(size=s).astype(dtype) for s, _ in LAYOUT]
        grads = [
            [(c * rng.normal(size=s)).astype(dtype) for (s, _), c in zip(LAYOUT, SCALES)]
            for _ in range(STEPS)
        ]
        for label, options in OPTION_SETS.items():
            if dtype == np.float32 and label != "none":
                continue  # float32: the plain run; the reductions' float64 runs prove the collectives
            if dtype == np.float64 and label == "none" and not own_reductions:
                continue  # element-wise with the options off: the float32 run shows its sharding
            tx = getattr(gen, rule.module)(learning_rate=0.01, **options)
            plain = trajectory(tx, params, grads, lambda x, i: jnp.asarray(x))
            sharded = trajectory(
                tx,
                params,
                grads,
                lambda x, i: jax.device_put(jnp.asarray(x), NamedSharding(mesh, LAYOUT[i][1])),
            )
            worst = 0.0
            for (p0, s0), (p1, s1) in zip(plain, sharded):
                leaves0 = jax.tree.leaves((p0, s0))
                leaves1 = jax.tree.leaves((p1, s1))
                if len(leaves0) != len(leaves1):
                    worst = float("inf")
                    break
                worst = max([worst] + [rel(a, b) for a, b in zip(leaves1, leaves0)])
            last_params, last_state = sharded[-1]
            first_state = tx.init(
                [
                    jax.device_put(jnp.asarray(p), NamedSharding(mesh, LAYOUT[i][1]))
                    for i, p in enumerate(params)
                ]
            )
            result[f"{label}/{np.dtype(dtype).name}"] = {
                "rel": worst,
                "misplaced": misplaced(last_params, last_state, mesh)
                + [f"after init: {m}" for m in misplaced(last_params, first_state, mesh)],
            }
    return result


if __name__ == "__main__":
    print(json.dumps({name: main(name) for name in sys.argv[1:]}))
