"""Run-time support for generated torch optimizers: the precision policy and parameter checks."""

from __future__ import annotations

from typing import Any

import torch

from . import common


def state_dtype(w: torch.Tensor, chosen: Any = None) -> torch.dtype:
    """The dtype of a parameter's state: ``chosen``, or at least float32 (half/bfloat16 params keep float32 state)."""
    return chosen if chosen is not None else torch.promote_types(w.dtype, torch.float32)


def upcast(g: torch.Tensor) -> torch.Tensor:
    """The gradient in at least float32 (no copy for float32 and float64)."""
    if g.dtype is torch.float32 or g.dtype is torch.float64:
        return g  # the common case, without a call into torch
    return g.to(torch.promote_types(g.dtype, torch.float32))


def check_floating(w: torch.Tensor, optimizer: str) -> None:
    if not w.is_floating_point():
        raise TypeError(
            f"{optimizer} updates real floating-point parameters. Received: a {w.dtype} parameter of shape {tuple(w.shape)}"
        )


def check_param(w: torch.Tensor, optimizer: str) -> None:
    check_floating(w, optimizer)
    grad = w.grad
    if grad.is_sparse:
        raise RuntimeError(f"{optimizer} does not support sparse gradients")
    if grad.shape != w.shape:
        raise ValueError(
            f"the gradient of a parameter of shape {tuple(w.shape)} has shape {tuple(w.grad.shape)}"
        )


def check_state_dtype(chosen: Any) -> Any:
    if chosen is not None and not (isinstance(chosen, torch.dtype) and chosen.is_floating_point):
        raise TypeError(
            f"`state_dtype` must be None or a floating torch.dtype. Received: state_dtype={chosen!r}"
        )
    return chosen


_FUSED = (torch.float32, torch.float64)


def fusable(w: torch.Tensor, g: torch.Tensor, *states: torch.Tensor | None) -> bool:
    """Whether the fused path takes this parameter: CPU, contiguous, one dtype (float32 or float64) and one
    size (the kernels index the arrays by address, unchecked)."""
    dtype = w.dtype
    if dtype not in _FUSED or not w.is_cpu or not w.is_contiguous():
        return False
    size = w.numel()
    if g.dtype is not dtype or not g.is_cpu or not g.is_contiguous() or g.numel() != size:
        return False
    for s in states:
        if s is not None and (
            s.dtype is not dtype or not s.is_cpu or not s.is_contiguous() or s.numel() != size
        ):
            return False
    return True


def global_value(value: Any) -> torch.Tensor:
    """A global state that the step computes from tensors (a reduction over all tensors), as a 0-d tensor:
    a Python number (its initial value, or a checkpoint's) becomes one, in float64, the precision of global
    state (so ``torch.maximum`` and the other tensor functions take it)."""
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def plain(scalars: dict[str, Any]) -> dict[str, Any]:
    """The values of 0-d tensors (a reduction over all tensors) as Python numbers."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}


def scratch(
    cache: dict, count: int, w: torch.Tensor, *tensors: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """``count`` scratch buffers shaped like ``w`` on its device, in the dtype of its element-wise maths (the
    widest of ``w`` and ``tensors``), kept between steps (``common.scratch_views``)."""
    dtype = w.dtype
    for t in tensors:
        if t is not None and t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    device = w.device
    return common.scratch_views(
        cache,
        (dtype, device),
        count,
        w.numel(),
        w.shape,
        lambda n: torch.empty(n, dtype=dtype, device=device),
        lambda t, shape: t.view(shape),
    )
