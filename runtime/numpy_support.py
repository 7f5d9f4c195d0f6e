"""Containers of NumPy arrays: ``params`` is a list (or tuple) or a dict of float arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import common


def leaves(params: Any, what: str = "params") -> tuple[list, list[np.ndarray]]:
    """The keys and arrays of a list or dict of arrays, checked."""
    if isinstance(params, dict):
        keys = list(params)
    elif isinstance(params, (list, tuple)):
        keys = list(range(len(params)))
    else:
        raise TypeError(f"{what} must be a list or a dict of numpy arrays. Received: {type(params).__name__}")
    if not keys:
        raise ValueError(f"{what} is empty: expected at least one array")
    arrays = [params[k] for k in keys]
    for k, a in zip(keys, arrays):
        if not isinstance(a, np.ndarray):
            scalar = " (a NumPy scalar: np.asarray(x) is its 0-d array)" if isinstance(a, np.generic) else ""
            raise TypeError(f"{what}[{k!r}] must be a numpy.ndarray. Received: {type(a).__name__}{scalar}")
        if not is_float(a.dtype):
            raise TypeError(f"{what}[{k!r}] must have a real floating dtype. Received: dtype={a.dtype}")
    return keys, arrays


def like(params: Any, arrays: list[np.ndarray]) -> Any:
    """``arrays`` in the container type of ``params`` (dict with the same keys, or list)."""
    if isinstance(params, dict):
        return dict(zip(params, arrays))
    return list(arrays)


def check_step(params: Any, grads: Any, state: Any, scopes: dict[str, str]) -> list:
    """Keys of ``params`` after checking that grads and state match it (structure, shapes, dtypes).

    ``scopes``: per-parameter state name -> "element" (shaped like the parameter) or "tensor" (0-d).
    """
    keys, ws = leaves(params)
    gkeys, _ = leaves(grads, "grads")
    if gkeys != keys and sorted(map(repr, gkeys)) != sorted(map(repr, keys)):
        raise ValueError(f"grads must match params: expected keys {keys}, received {gkeys}")
    gs = [grads[k] for k in keys]
    for k, w, g in zip(keys, ws, gs):
        if g.shape != w.shape or g.dtype != w.dtype:
            raise ValueError(
                f"grads[{k!r}] must have the shape and dtype of params[{k!r}]: expected {w.shape} {w.dtype},"
                f" received {g.shape} {g.dtype}"
            )
    for name, scope in scopes.items():
        slot = getattr(state, name)
        if slot is None:
            continue
        if not isinstance(slot, (list, tuple, dict)):
            raise TypeError(
                f"state.{name} must mirror params (a list or dict). Received: {type(slot).__name__}"
            )
        skeys, _ = leaves(slot, f"state.{name}")
        if skeys != keys and sorted(map(repr, skeys)) != sorted(map(repr, keys)):
            raise ValueError(f"state.{name} does not match params: expected keys {keys}, received {skeys}")
        ss = [slot[k] for k in keys]
        for k, w, s in zip(keys, ws, ss):
            expected = common.state_shape(w.shape, scope)
            if s.shape != expected:
                raise ValueError(
                    f"state.{name}[{k!r}] must have shape {expected} ({common.scope_words(scope, w.shape)})."
                    f" Received: {s.shape}"
                )
    return keys


def is_float(dtype: Any) -> bool:
    """A real floating dtype: NumPy's, or ml_dtypes' bfloat16 and float8 types."""
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return True  # the common case, without np.dtype()
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name.startswith(("bfloat16", "float8"))


def check_dtype(name: str, chosen: Any) -> np.dtype | None:
    """A state's dtype as the constructor was given it (``state_dtype``, a rule's ``mu_dtype``): None, or
    a floating-point dtype (NumPy's, or ml_dtypes' bfloat16)."""
    if chosen is None:
        return None
    try:
        dtype = np.dtype(chosen)
    except TypeError:
        dtype = None
    if dtype is None or not is_float(dtype):
        raise TypeError(
            f"`{name}` must be None or a floating-point dtype (np.float32, 'float64', ...). Received:"
            f" {name}={chosen!r}"
        )
    return dtype


def state_dtype(w: np.ndarray, chosen: Any = None) -> np.dtype:
    """The dtype of a parameter's state: ``chosen``, or at least float32 (float16/bfloat16 params keep float32 state)."""
    return np.dtype(chosen) if chosen is not None else np.promote_types(w.dtype, np.float32)


def upcast(g: np.ndarray) -> np.ndarray:
    """The gradient in at least float32 (no copy for float32 and float64)."""
    return g.astype(np.promote_types(g.dtype, np.float32), copy=False)


def scratch(
    cache: dict, count: int, w: np.ndarray, *arrays: np.ndarray | None, scope: str = "element"
) -> tuple[np.ndarray, ...]:
    """``count`` scratch buffers shaped like ``w`` (``scope``: or with axes reduced to length 1, a row's,
    ``common.state_shape``; buffers apart), in the dtype of its element-wise maths (the widest of ``w``
    and ``arrays``), kept between steps (``common.scratch_views``)."""
    dtype = np.result_type(w, *[a for a in arrays if a is not None])
    shape = common.state_shape(w.shape, scope)
    return common.scratch_views(
        cache,
        (dtype, scope),
        count,
        math.prod(shape),
        shape,
        lambda n: np.empty(n, dtype),
        lambda a, shape: a.reshape(shape),
    )


def masks(cache: dict, count: int, w: np.ndarray, scope: str = "element") -> tuple[np.ndarray, ...]:
    """``count`` boolean buffers shaped like ``w`` (``scope``: as ``scratch``; a select's conditions), kept
    between steps."""
    shape = common.state_shape(w.shape, scope)
    return common.scratch_views(
        cache,
        (np.dtype(bool), scope),
        count,
        math.prod(shape),
        shape,
        lambda n: np.empty(n, bool),
        lambda a, shape: a.reshape(shape),
    )


def from_params(ws: list[np.ndarray], dtypes: list[np.dtype], initial: Any) -> list[np.ndarray]:
    """A state that starts at ``initial(w)`` (w in the state's dtype): a new array per parameter, never a
    view of it (the parameter is then updated in place)."""
    out = []
    for w, dtype in zip(ws, dtypes):
        state = np.empty_like(w, dtype=dtype)
        state[...] = initial(np.asarray(w, dtype=dtype))
        out.append(state)
    return out


def new_state(w: np.ndarray, scope: str, init: Any, dtype: Any) -> np.ndarray:
    """A state at its initial value, shaped for its scope (``common.state_shape``: like ``w``, 0-d, or with
    axes of ``w`` reduced to length 1)."""
    return np.full(common.state_shape(w.shape, scope), init, dtype)


def _axis_sum(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """The sum over ``axis``, kept with length 1 (into ``out`` where given); where ``x`` has no such axis
    (it has length 1), a copy of ``x`` (held apart from a buffer that is updated in place later)."""
    if np.ndim(x) < -axis:
        return np.array(x, copy=True) if out is None else _copied(out, x)
    return np.sum(x, axis=axis, keepdims=True, out=out)


def _axis_mean(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """The mean over ``axis``, kept with length 1: the sum over the axis's length, as ``np.mean`` computes
    it, and 0 over an empty axis (a tensor with no elements); ``axis_sum``'s convention for an axis ``x``
    lacks."""
    if np.ndim(x) < -axis:
        return np.array(x, copy=True) if out is None else _copied(out, x)
    total = np.sum(x, axis=axis, keepdims=True, out=out)
    return np.divide(total, max(np.shape(x)[axis], 1), out=out)


def _axis_max(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """The maximum over ``axis``, kept with length 1, -inf over an empty axis (``axis_sum``'s convention for
    an axis ``x`` lacks)."""
    if np.ndim(x) < -axis:
        return np.array(x, copy=True) if out is None else _copied(out, x)
    return np.max(x, axis=axis, keepdims=True, initial=-np.inf, out=out)


def float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The rules' ``float32(x)`` of an array: each element rounded to the nearest float32, in the dtype of
    ``out`` (or of ``x``): one pass, computed in float32 (optax keeps Adafactor's momentum so)."""
    x = np.asarray(x)
    if out is None:
        out = np.empty_like(x, dtype=np.promote_types(x.dtype, np.float32))
    return np.positive(x, out=out, dtype=np.float32, casting="unsafe")


def as_matrix(x: Any) -> np.ndarray:
    """``x`` viewed as a matrix (its last two axes): below rank 2, a ``1 x n`` (``1 x 1``) matrix."""
    x = np.asarray(x)
    return x.reshape((1,) * (2 - x.ndim) + x.shape) if x.ndim < 2 else x


def matmul(
    a: np.ndarray, b: np.ndarray, like: np.ndarray | None = None, scope: str = "element", out: Any = None
) -> np.ndarray:
    """The matrix product ``a @ b`` of two values viewed as matrices (``as_matrix``), batched over leading
    axes: into ``out`` (a buffer of the result's shape), or shaped as the parameter ``like``'s ``scope``
    says (``common.state_shape``: a vector's ``1 x n`` result is a vector again)."""
    if out is not None:
        np.matmul(as_matrix(a), as_matrix(b), out=as_matrix(out))
        return out
    product = np.matmul(as_matrix(a), as_matrix(b))
    return product if like is None else product.reshape(common.state_shape(np.shape(like), scope))


def transpose(
    x: np.ndarray, like: np.ndarray | None = None, scope: str = "element", out: np.ndarray | None = None
) -> np.ndarray:
    """``x`` viewed as a matrix with its last two axes swapped: a view (shaped as ``matmul`` says), or copied
    into ``out`` (a value kept by name must not follow the buffer it was read from)."""
    swapped = np.swapaxes(as_matrix(x), -1, -2)
    if out is not None:
        np.copyto(as_matrix(out), swapped)
        return out
    return swapped if like is None else swapped.reshape(common.state_shape(np.shape(like), scope))


def rows(w: np.ndarray) -> int:
    """The length of ``w``'s axis before the last (1 below rank 2: a ``1 x n`` matrix)."""
    return np.shape(w)[-2] if np.ndim(w) >= 2 else 1


def cols(w: np.ndarray) -> int:
    """The length of ``w``'s last axis (1 for a 0-d tensor)."""
    return np.shape(w)[-1] if np.ndim(w) >= 1 else 1


def _copied(out: np.ndarray, x: np.ndarray) -> np.ndarray:
    np.copyto(out, x)
    return out


def tensor_max(x: Any) -> Any:
    """The largest element of ``x``: -inf for an empty tensor (the maximum's identity, as over an empty axis;
    ``np.max`` raises there)."""
    return np.max(x, initial=-np.inf)


def machine_epsilon(w: np.ndarray) -> float:
    """The machine epsilon of ``w``'s dtype (``np.finfo``; ml_dtypes' for bfloat16)."""
    try:
        return float(np.finfo(w.dtype).eps)
    except ValueError:  # bfloat16, float8: NumPy does not know them
        import ml_dtypes

        return float(ml_dtypes.finfo(w.dtype).eps)


def axis_sum(
    x: np.ndarray, axis: int, out: np.ndarray | None = None, like: Any = None, scope: str = "element"
) -> np.ndarray:
    """The sum over ``axis``, kept with length 1, into ``out`` (``_axis_sum``); ``like``: shaped as the
    parameter's ``scope`` says (a Gram matrix's row of a vector: ``(1,)``, not ``(1, 1)``)."""
    return _shaped(_axis_sum(x, axis, out), like, scope)


def axis_mean(
    x: np.ndarray, axis: int, out: np.ndarray | None = None, like: Any = None, scope: str = "element"
) -> np.ndarray:
    """The mean over ``axis``, kept with length 1 (``_axis_mean``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_mean(x, axis, out), like, scope)


def axis_max(
    x: np.ndarray, axis: int, out: np.ndarray | None = None, like: Any = None, scope: str = "element"
) -> np.ndarray:
    """The maximum over ``axis``, kept with length 1 (``_axis_max``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_max(x, axis, out), like, scope)


def _shaped(result: np.ndarray, like: Any, scope: str) -> np.ndarray:
    return result if like is None else result.reshape(common.state_shape(np.shape(like), scope))


def cover_max(x: Any, like: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """SM3's cover of ``x`` (shaped like the parameter ``like``): for each axis, the maximum over the other
    axes, the vectors laid end to end (``common.cover_slices``), into ``out`` (else a new array); a vector
    or a 0-d tensor is its own cover; a tensor with no elements, 0 (``common.cover_slices``)."""
    shape = np.shape(like)
    x = np.broadcast_to(x, shape)
    if out is None:
        out = np.empty(common.cover_length(shape), dtype=x.dtype)
    if len(shape) < 2:
        np.copyto(out, x.reshape(out.shape))
    elif x.size == 0:  # no element lies in any slice: nothing reads them (common.cover_slices)
        out.fill(0)
    else:
        axes = range(len(shape))
        for (start, stop, _), r in zip(common.cover_slices(shape), axes):
            np.max(x, axis=tuple(a for a in axes if a != r), out=out[start:stop])
    return out


def cover_min(mu: np.ndarray, like: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per element of a tensor shaped like ``like``, the minimum over its axes of the cover ``mu``
    (``cover_max``) at the element's index along each, into ``out`` (else a new array)."""
    parts = [mu[start:stop].reshape(shape) for start, stop, shape in common.cover_slices(np.shape(like))]
    if out is None:
        out = np.empty(np.shape(like), dtype=mu.dtype)
    np.copyto(out, parts[0])
    for part in parts[1:]:
        np.minimum(out, part, out=out)
    return out


def loss_value(value: Any, rule: str) -> float:
    """The objective's value given to ``step(..., value=...)`` (a number or a 0-d array), a Python float."""
    value = common.loss_value(value, rule)
    if np.ndim(value) != 0:
        raise ValueError(
            f"{rule}: value= is the objective's value, a number. Received an array of shape {np.shape(value)}"
        )
    return float(value)
