"""The fused path at run time: which tensors it takes, and running their updates over the cores.

Pure Python and NumPy; the kernels themselves are in ``optforge.generated.fused`` (Numba).
"""

from __future__ import annotations

import dataclasses
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
    """Whether the kernels take this tensor: C-contiguous, writable arrays of one dtype, float32 or float64,
    and one size (the kernels index them by address, unchecked)."""
    dtype = w.dtype
    if dtype not in FUSED_DTYPES or g.dtype != dtype or not w.flags.c_contiguous or not w.flags.writeable:
        return False
    size = w.size
    if not g.flags.c_contiguous or g.size != size:
        return False
    for s in states:
        if s is not None and (
            s.dtype != dtype or not s.flags.c_contiguous or not s.flags.writeable or s.size != size
        ):
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


@dataclasses.dataclass(frozen=True)
class Case:
    """What a generated fused module (``optforge.generated.fused``) gives ``run`` for one case of a rule."""

    #: ``prepare(dt, **scalars)``: the once-per-step values, rounded to ``dt``, as the ``step`` the others take
    prepare: Callable
    #: ``update(w, g, *states, step)``: one whole tensor, one kernel call (a case that writes per-tensor state)
    update: Callable | None = None
    #: otherwise (threads may share a tensor): ``addresses(table, i, w, g, *states)`` writes the arrays' addresses into ``table[i]``
    addresses: Callable | None = None
    #: ``rows(rows, table, values, step)``: every ``(i, lo, hi)`` of ``rows`` in one kernel call
    rows: Callable | None = None
    #: ``values(w, g, *states, step)``: a tensor's per-tensor values (a norm for ``clipnorm``), or None
    #: where the step needs none (then none of the tensors needs them)
    values: Callable | None = None
    #: how many per-tensor values a row's kernel reads
    n_values: int = 0


def run(case: Case, work: list[tuple], scalars: dict[str, Any], arrays: Callable | None = None) -> None:
    """Updates each tensor in ``work`` (its arrays: the parameter, the gradient, then the states, None for a
    state not kept) with ``case``, where ``step = case.prepare(dtype, **scalars)`` once per dtype; the work
    is shared out over the cores.

    Where the case allows it (it writes no per-tensor state), every tensor of at least ``SPLIT_MIN``
    elements is cut into one contiguous part per thread, so that the threads stream through the same
    tensors at the same time (about a tenth faster than whole tensors per thread on this benchmark's
    machine), the smaller ones are shared out whole, and one kernel call updates all the parts, from a
    table of addresses, its threads (Numba's ``prange``) each taking one thread's share. Numba's threading
    layer is then OpenMP where it can be, the pool that torch's own operations use: a second pool would
    compete for the cores with torch's threads, which keep spinning for a while after each operation. The
    per-tensor values (a norm for ``clipnorm``) are computed first, once per tensor, so that the same
    values reach every part whatever the number of threads. Otherwise each thread of a Python pool
    updates whole tensors, one kernel call each.

    ``arrays``: where ``work`` holds torch tensors (CPU, contiguous, one dtype, float32 or float64: the
    caller checks), what makes NumPy views of an item's tensors, for the per-tensor Python code; the
    kernels take the tensors by address (``data_ptr()``, about a tenth of the cost of a view).
    """
    view = (lambda item: item) if arrays is None else (lambda item: arrays(*item))
    by_dtype: dict[Any, list[tuple]] = {}
    for item in work:
        by_dtype.setdefault(item[0].dtype, []).append(item)
    for dtype, items in by_dtype.items():
        if arrays is None:
            dt, sizes = dtype.type, [item[0].size for item in items]
        else:
            dt, sizes = (
                (np.float32 if dtype.itemsize == 4 else np.float64),
                [item[0].numel() for item in items],
            )
        step = case.prepare(dt, **scalars)
        many = sum(sizes) >= PARALLEL_MIN
        if case.rows is None:
            parts = _parts(sizes, min(threads(), len(items)) if many else 1, False)
            _in_threads(parts, lambda part: [case.update(*view(items[i]), step) for i, _, _ in part])
            continue
        if arrays is None:
            table = np.empty((len(items), len(items[0])), np.int64)
            for i, item in enumerate(items):
                case.addresses(table, i, *item)
        else:
            table = np.array([[0 if t is None else t.data_ptr() for t in item] for item in items], np.int64)
        values = np.zeros((len(items), case.n_values), dt)
        first = None if case.values is None else case.values(*view(items[0]), step)
        if first is not None:  # this step needs them
            values[0] = first

            def tensor_values(part: list[tuple[int, int, int]]) -> None:
                for i, _, _ in part:
                    values[i] = case.values(*view(items[i]), step)

            rest = _parts(sizes[1:], min(threads(), len(items) - 1) if many else 1, False)
            _in_threads([[(i + 1, lo, hi) for i, lo, hi in p] for p in rest], tensor_values)
        parts = _parts(sizes, threads() if many else 1, True)
        rows = np.array([row for part in parts for row in part], np.int64)
        bounds = np.cumsum([0] + [len(part) for part in parts])
        case.rows(rows, bounds, table, values, step)


def _in_threads(parts: list, do: Callable[[Any], Any]) -> None:
    """``do(part)`` for each part, each in its own thread (this one does the first)."""
    if not parts:
        return
    futures = [_executor(len(parts)).submit(do, part) for part in parts[1:]]
    do(parts[0])
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
