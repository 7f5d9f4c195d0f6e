"""Run-time support for generated JAX optimizers: the precision policy."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def state_dtype(w: Any, chosen: Any = None) -> Any:
    """The dtype of a parameter's state: ``chosen``, or at least float32 (float16/bfloat16 params keep float32 state)."""
    return jnp.dtype(chosen) if chosen is not None else jnp.promote_types(w.dtype, jnp.float32)


def upcast(g: Any) -> Any:
    """The gradient in at least float32."""
    return g.astype(jnp.promote_types(g.dtype, jnp.float32))


def like(new: Any, old: Any) -> Any:
    """``new`` with the dtypes of ``old``, leaf by leaf (state keeps its dtype across steps)."""
    if old is None:
        return None
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def check_params(params: Any, name: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path)
            raise TypeError(
                f"{name} updates real floating-point parameters. Received: {dtype} at params{where}"
            )
