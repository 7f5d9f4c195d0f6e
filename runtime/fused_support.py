"""The fused path at run time: which tensors it takes, and running their updates over the cores.

Pure Python and NumPy; the kernels themselves are in ``optforge.generated.fused`` (Numba).
"""

from __future__ import annotations

import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: below this many elements in a step, one thread does it all (starting a second costs more than it saves)
PARALLEL_MIN = 1 << 16

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def load(module: str, rule: str) -> Any:
    """The generated fused module of a rule; a clear error when Numba is missing."""
    try:
        import numba  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{rule}(fused=True) compiles its update with Numba, which is not installed."
            " Install it with: pip install 'optforge[fused]' (or pip install numba), or use fused=False"
        ) from None
    return importlib.import_module(f"optforge.generated.fused.{module}")


def check_fused(fused: Any) -> bool:
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False. Received: {fused!r} ({type(fused).__name__})")
    return fused


def fusable(w: np.ndarray, g: np.ndarray, *states: np.ndarray | None) -> bool:
    """Whether the kernels take this tensor: C-contiguous, writable arrays of one dtype, float32 or float64."""
    dtype = w.dtype
    if dtype not in FUSED_DTYPES or g.dtype != dtype or not w.flags.c_contiguous or not w.flags.writeable:
        return False
    if not g.flags.c_contiguous:
        return False
    for s in states:
        if s is not None and (s.dtype != dtype or not s.flags.c_contiguous or not s.flags.writeable):
            return False
    return True


def threads() -> int:
    """The cores this process may use (``OPTFORGE_THREADS`` overrides)."""
    env = os.environ.get("OPTFORGE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(n, thread_name_prefix="optforge-fused")
        return _pool


#: a tensor at least this big is shared out among the threads, in contiguous parts, where the rule allows
SPLIT_MIN = 1 << 14


def run(
    update: Callable, prepare: Callable, work: list[tuple], scalars: dict[str, Any], split: bool = False
) -> None:
    """``update(*arrays, step, lo, hi)`` for each tensor in ``work`` (its arrays, the parameter first), where
    ``step = prepare(dtype, **scalars)`` once per dtype; the work is shared out over the cores.

    With ``split`` (the rule writes no per-tensor state), every tensor of at least ``SPLIT_MIN`` elements
    is cut into one contiguous part per thread, so that the threads stream through the same tensors at
    the same time (about a tenth faster than whole tensors per thread on this benchmark's machine), and the
    smaller ones are shared out whole. Each part computes the tensor's per-tensor values (a norm for
    ``clipnorm``) from the whole tensor: the same values in every part, and so the same results for any
    number of threads.
    """
    steps = {}
    for item in work:
        dt = item[0].dtype.type
        if dt not in steps:
            steps[dt] = prepare(dt, **scalars)
    sizes = [item[0].size for item in work]
    n = (threads() if split else min(threads(), len(work))) if sum(sizes) >= PARALLEL_MIN else 1
    parts = _parts(sizes, n, split)

    def do(part: list[tuple[int, int, int]]) -> None:
        for i, lo, hi in part:
            item = work[i]
            update(*item, steps[item[0].dtype.type], lo, hi)

    if len(parts) == 1:
        do(parts[0])
        return
    futures = [_executor(len(parts)).submit(do, part) for part in parts[1:]]
    do(parts[0])  # this thread does a share too
    for f in futures:
        f.result()


def _parts(sizes: list[int], n: int, split: bool) -> list[list[tuple[int, int, int]]]:
    """(tensor, lo, hi) for each of ``n`` threads: large tensors cut in ``n`` (if ``split``), the others
    whole, each to the thread with the least work so far."""
    parts: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    load = [0] * n
    whole = []
    for i, size in enumerate(sizes):
        if split and n > 1 and size >= SPLIT_MIN:
            bounds = [size * k // n // 16 * 16 for k in range(n)] + [size]  # cache-line multiples
            for k in range(n):
                parts[k].append((i, bounds[k], bounds[k + 1]))
                load[k] += bounds[k + 1] - bounds[k]
        else:
            whole.append(i)
    for i in sorted(whole, key=lambda i: -sizes[i]):
        k = load.index(min(load))
        parts[k].append((i, 0, sizes[i]))
        load[k] += sizes[i]
    return [p for p in parts if p]
