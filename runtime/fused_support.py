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


def shares(sizes: list[int], n: int) -> list[list[int]]:
    """Indices split into ``n`` shares of nearly equal total size (largest first, each to the lightest share)."""
    load = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        k = load.index(min(load))
        out[k].append(i)
        load[k] += sizes[i]
    return [s for s in out if s]


def run(update: Callable, prepare: Callable, work: list[tuple], scalars: dict[str, Any]) -> None:
    """``update(*arrays, step)`` for each tensor in ``work`` (its arrays, the parameter first), where
    ``step = prepare(dtype, **scalars)`` once per dtype; the tensors are shared out over the cores."""
    steps = {}
    for item in work:
        dt = item[0].dtype.type
        if dt not in steps:
            steps[dt] = prepare(dt, **scalars)
    sizes = [item[0].size for item in work]
    n = min(threads(), len(work)) if sum(sizes) >= PARALLEL_MIN else 1

    def do(indices: list[int]) -> None:
        for i in indices:
            item = work[i]
            update(*item, steps[item[0].dtype.type])

    parts = shares(sizes, n)
    if len(parts) == 1:
        do(parts[0])
        return
    futures = [_executor(n).submit(do, part) for part in parts[1:]]
    do(parts[0])  # this thread does a share too
    for f in futures:
        f.result()
