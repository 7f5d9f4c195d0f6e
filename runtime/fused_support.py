"""The fused path at run time: which tensors it takes, and running their updates over the cores.

Pure Python and NumPy; the kernels themselves are in ``optforge.generated.fused`` (Numba).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
from typing import Any, Callable

import numpy as np

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: below this many elements in a step, one thread does it all (starting a second costs more than it saves)
PARALLEL_MIN = 1 << 16


def load(module: str, rule: str, refused: str = "") -> Any:
    """The generated fused module of a rule; a clear error when Numba is missing, or where the rule has no
    kernels (``refused``: why)."""
    if refused:
        raise ValueError(f"{rule}(fused=True): {rule} has no fused kernels: {refused}. Use fused=False")
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


#: a tensor at least this big is shared out among the threads, in contiguous parts, where the rule allows
SPLIT_MIN = 1 << 14


@dataclasses.dataclass(frozen=True)
class Case:
    """What a generated fused module (``optforge.generated.fused``) gives ``run`` for one case of a rule."""

    #: ``prepare(dt, **scalars)``: the once-per-step values, rounded to ``dt``, as the ``step`` the others take
    prepare: Callable
    #: the arrays of a work item, in the order of the kernels' table: ``("w", "g", *states)``
    arrays: tuple[str, ...]
    #: ``update(rows, bounds, table, dt, step)``: every row ``(i, lo, hi)`` of ``rows`` (elements ``lo`` to
    #: ``hi`` of tensor ``i``), the rows ``bounds[k]`` to ``bounds[k + 1]`` on thread ``k``, in one call
    update: Callable
    #: whether threads may share a tensor, each one a part: never (the case writes a per-tensor state),
    #: always, or ``split(step)``: in the steps whose update reads no per-tensor value
    split: bool | Callable = False
    #: the tensors the kernels take (``common.PerTensor``: a test of the shape and of hyperparameters), or
    #: "element": every tensor (a rule whose step reads the shape takes the others on its plain path)
    takes: str = "element"


def kernel(module: Any, case: int) -> Case:
    """Case ``case`` of the rule in its generated fused module (``UPDATE_CASE_<case>``)."""
    return getattr(module, f"UPDATE_CASE_{case}")


_TAKES: dict[int, tuple[Case, tuple[str, ...], tuple[str, ...]]] = {}


def takes(case: Case) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What ``case`` takes, as its generated functions declare it: the states after ``w`` and ``g`` (in the
    order of ``run``'s work items) and the once-per-step values (``prepare``'s arguments after ``dt``)."""
    if hasattr(case, "scalars"):  # a Triton case (runtime/triton_support.Case) says it
        return tuple(case.arrays[2:]), tuple(case.scalars)
    known = _TAKES.get(id(case))
    if known is None or known[0] is not case:
        scalars = tuple(inspect.signature(case.prepare).parameters)[1:]  # after dt
        known = _TAKES[id(case)] = (case, tuple(case.arrays[2:]), scalars)
    return known[1], known[2]


def run(case: Case, work: list[tuple], scalars: dict[str, Any]) -> None:
    """Updates each tensor in ``work`` (its arrays or CPU tensors: the parameter, the gradient, then the
    states, None for a state not kept) with ``case``, where ``step = case.prepare(dtype, **scalars)`` once
    per dtype, in one parallel kernel call per dtype that takes the tensors by address (``data_ptr()`` for
    torch tensors: no NumPy view is made). The caller has checked the arrays: C-contiguous, one dtype,
    float32 or float64, one size.

    The threads (Numba's ``prange``, in ``fused_numba.drive``: they call the case's row kernel) each take a
    share of the tensors: whole tensors (each one's per-tensor values, such as a norm, then its elements, so
    that the results are the same for any number of threads), or, where the case writes no per-tensor state
    and the step reads no per-tensor value (``case.split``), every tensor of at least ``SPLIT_MIN`` elements
    cut into one contiguous part per thread (the threads stream through the same tensors at the same time,
    about a tenth faster than whole tensors on this benchmark's machine). Numba's threading layer is OpenMP
    where it can be (its own libgomp: beside torch's, a second pool; see the README's performance section).
    """
    by_dtype: dict[Any, list[tuple]] = {}
    for item in work:
        by_dtype.setdefault(item[0].dtype, []).append(item)
    for dtype, items in by_dtype.items():
        tensors = not isinstance(items[0][0], np.ndarray)
        if not tensors:
            dt, sizes = dtype.type, [item[0].size for item in items]
        else:
            dt, sizes = (
                (np.float32 if dtype.itemsize == 4 else np.float64),
                [item[0].numel() for item in items],
            )
        step = case.prepare(dt, **scalars)
        many = sum(sizes) >= PARALLEL_MIN
        if not tensors:
            from optforge.runtime.fused_numba import addresses

            table = np.empty((len(items), len(items[0])), np.int64)
            for i, item in enumerate(items):
                addresses(table, i, *item)
        else:
            table = np.array([[0 if t is None else t.data_ptr() for t in item] for item in items], np.int64)
        split = case.split if isinstance(case.split, bool) else case.split(step)
        n = threads() if many else 1
        rows, bounds = _layout(tuple(sizes), n if split else min(n, len(items)), split)
        case.update(rows, bounds, table, dt, step)


@functools.lru_cache(maxsize=64)
def _layout(sizes: tuple[int, ...], n: int, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """``_parts`` as a kernel takes them: every ``(tensor, lo, hi)`` in one array, and where each thread's
    share starts and ends in it (kept: the same tensors come back every step). Read-only."""
    parts = _parts(list(sizes), n, split)
    rows = np.array([row for part in parts for row in part], np.int64).reshape(-1, 3)
    bounds = np.cumsum([0] + [len(part) for part in parts])
    rows.flags.writeable = bounds.flags.writeable = False
    return rows, bounds


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
