"""Run-time support for generated JAX optimizers: the precision policy."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common


def nonzero(value: Any) -> bool:
    """Whether a number that 0 turns off (SGD's momentum) turns its computation on: a Python number when it
    is not 0; an array (``optax.inject_hyperparams`` makes one, traced under jit) always, as optax's own
    optimizers take a given momentum: that computation with 0 is the one it replaces."""
    return True if isinstance(value, (jax.Array, np.ndarray)) else value != 0


def zero(value: Any) -> bool:
    """``not nonzero(value)``."""
    return not nonzero(value)


def check_dtype(name: str, chosen: Any, otherwise: Any = None) -> Any:
    """A state's dtype as the function was given it (``state_dtype``, a rule's ``mu_dtype``): a
    floating-point dtype, or ``otherwise`` for None."""
    if chosen is None:
        return otherwise
    try:
        dtype = jnp.dtype(chosen)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be None or a floating-point dtype (jnp.bfloat16, jnp.float32, ...). Received:"
            f" {name}={chosen!r}"
        )
    return dtype


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


def leaves(treedef: Any, params: Any) -> list:
    """The parameters' leaves, or None for each where ``update`` was called without them (the
    configuration then reads no parameter)."""
    return [None] * treedef.num_leaves if params is None else treedef.flatten_up_to(params)


def check_update(name: str, grads: Any, params: Any, states: dict[str, tuple[Any, str]]) -> None:
    """Gradients and state match the parameters: pytree structure and leaf shapes (checked at trace time)."""
    reference = params if params is not None else grads
    structure = jax.tree.structure(reference)
    if jax.tree.structure(grads) != structure:
        raise ValueError(
            f"{name}: pytree mismatch: the gradients' pytree {jax.tree.structure(grads)} differs from the params' {structure}"
        )
    shapes = [jnp.shape(x) for x in jax.tree.leaves(reference)]
    for i, (g, shape) in enumerate(zip(jax.tree.leaves(grads), shapes)):
        if jnp.shape(g) != shape:
            raise ValueError(
                f"{name}: shape mismatch: gradient leaf {i} has shape {jnp.shape(g)}, its parameter {shape}"
            )
    for field, (tree, scope) in states.items():
        if tree is None:
            continue
        if jax.tree.structure(tree) != structure:
            raise ValueError(
                f"{name}: state.{field} has the pytree {jax.tree.structure(tree)}, the params {structure}:"
                " a state made for other parameters"
            )
        for i, (leaf, shape) in enumerate(zip(jax.tree.leaves(tree), shapes)):
            expected = common.state_shape(shape, scope)
            if jnp.shape(leaf) != expected:
                raise ValueError(
                    f"{name}: state.{field} leaf {i} has shape {jnp.shape(leaf)}, expected {expected}"
                    f" ({common.scope_words(scope, shape)})"
                )


def check_params(params: Any, name: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path)
            raise TypeError(
                f"{name} updates real floating-point parameters. Received: {dtype} at params{where}"
            )


def from_params(params: Any, chosen: Any, initial: Any) -> Any:
    """A state that starts at ``initial(w)``, w each parameter in its state's dtype (see ``state_dtype``)."""

    def leaf(w: Any) -> Any:
        dtype = state_dtype(w, chosen)
        w = jnp.asarray(w, dtype)
        return jnp.broadcast_to(jnp.asarray(initial(w), dtype), w.shape)

    return jax.tree.map(leaf, params)


def as_float(k: Any) -> Any:
    """An integer array (the step) as a weakly typed float, exactly as a Python int would promote: float64
    under ``jax_enable_x64`` (float32 without), so that ``(t - 1) / N`` or ``1 / t`` is computed in the
    precision of the parameters it meets (integer / integer would be float32 in JAX, even under x64)."""
    return k * 1.0


def float32(x: Any) -> Any:
    """The rules' ``float32(x)``: ``x`` rounded to the nearest float32 in its own dtype (a traced value keeps
    its dtype, and a Python number's weak type is kept: ``lax.reduce_precision``)."""
    if isinstance(x, (int, float)):
        return common.float32(x)
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=23)


def new_state(w: Any, scope: str, init: Any, dtype: Any) -> Any:
    """A state at its initial value, shaped for its scope (``common.state_shape``: like ``w``, 0-d, or with
    axes of ``w`` reduced to length 1), laid out like ``w``: sharded as it is, its reduced axes whole on
    every device (a vector's moment, where no axis is reduced, is ``w``'s layout itself)."""
    shape = common.state_shape(jnp.shape(w), scope)
    if shape == jnp.shape(w):
        return jnp.full_like(w, init, dtype=dtype)
    value = jnp.full(shape, init, dtype)
    sharding = getattr(w, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.spec) <= len(shape):
        spec = [None if shape[i] != jnp.shape(w)[i] else axis for i, axis in enumerate(sharding.spec)]
        value = jax.device_put(
            value, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        )
    return value


def _axis_sum(x: Any, axis: int) -> Any:
    """The sum over ``axis``, kept with length 1; where ``x`` has no such axis (it has length 1), ``x``."""
    return jnp.sum(x, axis=axis, keepdims=True) if jnp.ndim(x) >= -axis else x


def _axis_mean(x: Any, axis: int) -> Any:
    """The mean over ``axis``, kept with length 1: the sum over the axis's length, and 0 over an empty axis
    (a tensor with no elements); ``axis_sum``'s convention for an axis ``x`` lacks."""
    if jnp.ndim(x) < -axis:
        return x
    return jnp.sum(x, axis=axis, keepdims=True) / max(jnp.shape(x)[axis], 1)


def _axis_max(x: Any, axis: int) -> Any:
    """The maximum over ``axis``, kept with length 1, -inf over an empty axis (``axis_sum``'s convention for
    an axis ``x`` lacks)."""
    return jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf) if jnp.ndim(x) >= -axis else x


def as_matrix(x: Any) -> Any:
    """``x`` viewed as a matrix (its last two axes): below rank 2, a ``1 x n`` (``1 x 1``) matrix."""
    return jnp.reshape(x, (1,) * (2 - jnp.ndim(x)) + jnp.shape(x)) if jnp.ndim(x) < 2 else x


def matmul(a: Any, b: Any, like: Any = None, scope: str = "element") -> Any:
    """The matrix product ``a @ b`` of two values viewed as matrices (``as_matrix``), batched over leading
    axes, shaped as the parameter ``like``'s ``scope`` says (``common.state_shape``: a vector's ``1 x n``
    result is a vector again)."""
    product = jnp.matmul(as_matrix(a), as_matrix(b))
    return product if like is None else jnp.reshape(product, common.state_shape(jnp.shape(like), scope))


def transpose(x: Any, like: Any = None, scope: str = "element") -> Any:
    """``x`` viewed as a matrix with its last two axes swapped, shaped as ``matmul`` says."""
    swapped = jnp.swapaxes(as_matrix(x), -1, -2)
    return swapped if like is None else jnp.reshape(swapped, common.state_shape(jnp.shape(like), scope))


def rows(w: Any) -> int:
    """The length of ``w``'s axis before the last (1 below rank 2: a ``1 x n`` matrix)."""
    return jnp.shape(w)[-2] if jnp.ndim(w) >= 2 else 1


def cols(w: Any) -> int:
    """The length of ``w``'s last axis (1 for a 0-d tensor)."""
    return jnp.shape(w)[-1] if jnp.ndim(w) >= 1 else 1


def tensor_max(x: Any) -> Any:
    """The largest element of ``x``: -inf for an empty tensor (the maximum's identity; ``jnp.max`` raises)."""
    return jnp.max(x, initial=-jnp.inf)


def machine_epsilon(w: Any) -> float:
    """The machine epsilon of ``w``'s dtype (``jnp.finfo``), a Python float."""
    return float(jnp.finfo(w.dtype).eps)


def axis_sum(x: Any, axis: int, like: Any = None, scope: str = "element") -> Any:
    """The sum over ``axis``, kept with length 1 (``_axis_sum``); ``like``: shaped as the parameter's
    ``scope`` says (a Gram matrix's row of a vector: ``(1,)``, not ``(1, 1)``)."""
    return _shaped(_axis_sum(x, axis), like, scope)


def axis_mean(x: Any, axis: int, like: Any = None, scope: str = "element") -> Any:
    """The mean over ``axis``, kept with length 1 (``_axis_mean``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_mean(x, axis), like, scope)


def axis_max(x: Any, axis: int, like: Any = None, scope: str = "element") -> Any:
    """The maximum over ``axis``, kept with length 1 (``_axis_max``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_max(x, axis), like, scope)


def _shaped(result: Any, like: Any, scope: str) -> Any:
    return result if like is None else jnp.reshape(result, common.state_shape(jnp.shape(like), scope))


def cover_max(x: Any, like: Any) -> Any:
    """SM3's cover of ``x`` (shaped like the parameter ``like``): for each axis, the maximum over the other
    axes, the vectors laid end to end (``common.cover_slices``); a vector or a 0-d tensor is its own cover;
    a tensor with no elements, 0 (``common.cover_slices``)."""
    shape = jnp.shape(like)
    x = jnp.broadcast_to(x, shape)
    if len(shape) < 2:
        return jnp.reshape(x, (common.cover_length(shape),))
    if x.size == 0:  # no element lies in any slice: nothing reads them (common.cover_slices)
        return jnp.zeros(common.cover_length(shape), x.dtype)
    axes = range(len(shape))
    return jnp.concatenate([jnp.max(x, axis=tuple(a for a in axes if a != r)) for r in axes])


def cover_min(mu: Any, like: Any) -> Any:
    """Per element of a tensor shaped like ``like``, the minimum over its axes of the cover ``mu``
    (``cover_max``) at the element's index along each."""
    parts = [
        jnp.reshape(mu[start:stop], shape) for start, stop, shape in common.cover_slices(jnp.shape(like))
    ]
    out = parts[0]
    for part in parts[1:]:
        out = jnp.minimum(out, part)
    return out


def loss_value(value: Any, rule: str) -> Any:
    """The objective's value given to ``update(..., value=...)`` (optax's keyword), a 0-d array (traced
    under jit)."""
    value = jnp.asarray(common.loss_value(value, rule))
    if value.ndim != 0:
        raise ValueError(
            f"{rule}: value= is the objective's value, a number. Received an array of shape {value.shape}"
        )
    return value
