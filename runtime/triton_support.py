"""The Triton path at run time: the chunk and tensor tables, the step's scalars, and the launches.

The kernels are in ``optforge.generated.triton`` (one module per rule, printed from the rules by
``backends/triton``); each case of a rule is a :class:`Case`, its kernels in launch order. :func:`run`
takes the tensors of one step (CUDA tensors; CPU tensors where ``TRITON_INTERPRET=1``, which the tests
use) and launches each kernel once per dtype over all of them.

Host synchronisation: none in a step. The reductions (per-tensor norms, ``global_clipnorm``'s sum over all
tensors) stay in device buffers between the kernels; the step's scalars go to the device in one small
tensor (``k_``, copied from pinned memory without waiting); the tables are copied only when the tensors
change (their addresses or sizes: a new gradient tensor each step, as ``zero_grad(set_to_none=True)``
gives, means a 16-byte-per-array copy of the tensor table each step, the chunk table being kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .torch_support import PLAIN

#: elements per chunk: one program of the chunk kernels each
BLOCK = 1024

_TL = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


# -- what the kernels call ------------------------------------------------------------------------


@triton.jit
def fsqrt(x):
    """The square root rounded as IEEE says (Triton's ``tl.sqrt`` is approximate in float32)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def fmax(a, b):
    """NumPy's ``maximum``: NaN if either is NaN."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def fmin(a, b):
    """NumPy's ``minimum``: NaN if either is NaN."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def fsign(x):
    """NumPy's ``sign``: -1, 0 or 1 (NaN stays NaN), in the dtype of ``x``."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x)).to(x.dtype)


# -- what a generated module declares ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phase:
    """One kernel of a case: launched over the chunks (one program each), the tensors, or ``one``
    program; with the step's flags it takes (its ``tl.constexpr`` arguments); skipped in the steps where
    the flag ``when`` is False (a reduction that the step does not need)."""

    kernel: Any
    grid: str
    flags: tuple[str, ...] = ()
    when: str = ""


@dataclasses.dataclass(frozen=True)
class Case:
    """One case of a rule in ``optforge.generated.triton.<module>``."""

    #: ``prepare(dt, **scalars)``: (the step's flags by name, its numbers in the NumPy dtype ``dt``)
    prepare: Callable
    #: the names of the step's scalars that ``prepare`` takes
    scalars: tuple[str, ...]
    #: what a work item holds, in order: ``w``, ``g``, then the states (per element: shaped like ``w``)
    arrays: tuple[str, ...]
    #: those of the states that hold one value per tensor (0-d tensors)
    tensor_states: tuple[str, ...]
    #: how many per-tensor values pass from one kernel to the next (per tensor), and over all tensors
    tensor_values: int
    global_values: int
    phases: tuple[Phase, ...]
    #: the tensors the kernels take (``common.PerTensor``), or "element": every tensor
    takes: str = "element"


def load(module: str, rule: str = "") -> Any:
    """The generated Triton module of a rule; a clear error when Triton is missing."""
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - triton is installed with the test extra
        raise ImportError(
            f"{rule or module}'s GPU kernels are compiled by Triton, which is not installed."
            " Install it with: pip install 'optforge[triton]'"
        ) from None
    return importlib.import_module(f"optforge.generated.triton.{module}")


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``): on CPU tensors, slowly."""
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - Triton before 3.4 reads the variable itself
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return bool(knobs.runtime.interpret)


def _fpow_interpreted(x, y):
    """``x ** y`` as NumPy's ``power`` of floats, where the interpreter runs the kernels (it has no libdevice:
    the tests): ``exp(y log|x|)``, with the sign of an odd integer power of a negative number, NaN for any
    other power of one (its ``log``), and 1 where ``y`` is 0 or ``x`` is 1."""
    y = y + tl.zeros_like(x)
    r = tl.exp(y * tl.log(tl.abs(x)))
    whole = y == tl.floor(y)
    odd = whole & (y - 2.0 * tl.floor(y * 0.5) == 1.0)
    r = tl.where(x < 0, tl.where(whole, tl.where(odd, -r, r), tl.log(x)), r)
    return tl.where((y == 0) | (x == 1), 1.0, r).to(x.dtype)


def _fpow_compiled(x, y):
    """``x ** y``: libdevice's ``pow`` (CUDA's, IEEE's ``pow`` of floats), the exponent in the base's dtype."""
    return libdevice.pow(x, (y + tl.zeros_like(x)).to(x.dtype))


#: ``x ** y`` of a block and a number or a block (a power other than 2 and +-1/2, which print as a product
#: and square roots: ``v ** (1/3)``, MADGRAD's cube root); Triton has no ``**`` of blocks
fpow = triton.jit(_fpow_interpreted if interpreting() else _fpow_compiled)


def takes(w: torch.Tensor, g: torch.Tensor, *states: torch.Tensor | None) -> bool:
    """Whether the kernels take this parameter: on a CUDA device (or the CPU under the interpreter),
    contiguous, floating point, its gradient and states of its size and device, the states of one dtype."""
    return _launch_of((w, g, *states), interpreting(), []) is not None


def _launch_of(item: tuple, interpreter: bool, addresses: list[int]) -> tuple | None:
    """The launch a work item ``(w, g, *states)`` goes to, (parameter dtype, gradient dtype, state dtype,
    device index), where the kernels take it (``takes``), its tensors' addresses appended to
    ``addresses`` (0 for a state not kept); None where they do not take it. Called for every tensor at
    every step, so written for the host's time: plain attribute reads, no device objects made."""
    w, g = item[0], item[1]
    if type(w) not in PLAIN or type(g) not in PLAIN:  # a DTensor's reductions span its other shards
        return None
    if not (w.is_cuda or (interpreter and w.is_cpu)):
        return None
    w_dt, g_dt = w.dtype, g.dtype
    if w_dt not in _TL or g_dt not in _TL or not w.is_contiguous() or not g.is_contiguous():
        return None
    device = w.get_device()
    if g.get_device() != device or g.numel() != w.numel():
        return None
    addresses.append(w.data_ptr())
    addresses.append(g.data_ptr())
    s_dt = None
    for s in item[2:]:
        if s is None:
            addresses.append(0)
            continue
        dt = s.dtype
        if dt not in _STATE_DTYPES or s.get_device() != device or not s.is_contiguous():
            return None
        if s_dt is not None and dt != s_dt:
            return None
        s_dt = dt
        addresses.append(s.data_ptr())
    return w_dt, g_dt, s_dt, device


_STATE_DTYPES = (torch.float32, torch.float64)


# -- the tables ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tables:
    """The tables of one list of tensors (one dtype) and the buffers the kernels pass values in."""

    chunks: torch.Tensor  # int64 (n_chunks, 3): tensor, start, length
    tensors: torch.Tensor  # int64 (n_tensors, 2 + arrays): first chunk, number of chunks, addresses
    partials: torch.Tensor  # float64 (n_chunks,): each chunk's partial result of a reduction
    tvals: torch.Tensor  # float64 (n_tensors, tensor values)
    gvals: torch.Tensor  # float64 (global values,)
    n_chunks: int
    n_tensors: int


#: the tables of the last few lists of tensors, by (device, addresses, sizes, chunk size)
_TABLES: OrderedDict[tuple, Tables] = OrderedDict()
_KEEP = 16


def tables(case: Case, items: list[tuple] | Launch, block: int = BLOCK) -> Tables:
    """The chunk and tensor tables of ``items`` (each ``(w, g, *states)``, None for a state not kept; or
    a :class:`Launch`, which has their addresses and sizes), kept while the tensors stay the same (same
    addresses and sizes), else built again and copied to the device once."""
    if isinstance(items, Launch):
        addresses, sizes, items = tuple(items.addresses), tuple(items.sizes), items.items
    else:
        addresses = tuple(0 if t is None else t.data_ptr() for item in items for t in item)
        sizes = tuple(item[0].numel() for item in items)
    device = items[0][0].device
    key = (device, len(items[0]), addresses, sizes, block, case.tensor_values, case.global_values)
    found = _TABLES.get(key)
    if found is not None:
        _TABLES.move_to_end(key)
        # another optimizer over tensors at the same addresses (freed and allocated again) may have left
        # its per-tensor and global values here: each step starts from zeros
        found.tvals.zero_()
        found.gvals.zero_()
        return found
    counts = np.array([(n + block - 1) // block for n in sizes], np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_chunks = int(counts.sum())
    owner = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    starts = (np.arange(n_chunks, dtype=np.int64) - np.repeat(first, counts)) * block
    lengths = np.minimum(np.repeat(np.array(sizes, np.int64), counts) - starts, block)
    chunks = np.stack([owner, starts, lengths], axis=1) if n_chunks else np.zeros((1, 3), np.int64)
    addr = np.array(addresses, np.int64).reshape(len(items), len(items[0]))
    tensors = np.concatenate([first[:, None], counts[:, None], addr], axis=1)
    made = Tables(
        chunks=_to(torch.from_numpy(np.ascontiguousarray(chunks)), device),
        tensors=_to(torch.from_numpy(np.ascontiguousarray(tensors)), device),
        partials=torch.zeros(max(n_chunks, 1), dtype=torch.float64, device=device),
        tvals=torch.zeros((len(items), max(case.tensor_values, 1)), dtype=torch.float64, device=device),
        gvals=torch.zeros(max(case.global_values, 1), dtype=torch.float64, device=device),
        n_chunks=n_chunks,
        n_tensors=len(items),
    )
    _TABLES[key] = made
    while len(_TABLES) > _KEEP:
        _TABLES.popitem(last=False)
    return made


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: from pinned memory without waiting, on a CUDA device."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x


# -- a step ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """The work items of one launch per kernel (one dtype of parameters, gradients and states, one
    device), with what the tables are kept by: every tensor's address (0 for a state not kept) and each
    parameter's size."""

    items: list[tuple]
    addresses: list[int]
    sizes: list[int]


def plan(
    case: Case, work: list[tuple], scalars: dict[str, Any], partial: bool = False
) -> dict[tuple, Launch] | None:
    """The launches of a step of ``work`` by parameter, gradient and state dtype and device index, where
    :func:`run` computes it as the plain path does; else None. The kernels must take every tensor
    (:func:`takes`), and a step that reduces over all tensors (``global_clipnorm``) must have them in one
    launch, and all of them (``partial``: ``work`` is some of the group's tensors, the others the plain
    path's): the kernels' sum over all tensors is a sum over one launch's tensors. One pass over the
    tensors, every step: its reads are most of the host's time in a step."""
    interpreter = interpreting()
    launches: dict[tuple, Launch] = {}
    last_key, launch = None, None
    for item in work:
        addresses: list[int] = []
        key = _launch_of(item, interpreter, addresses)
        if key is None:
            return None
        if key != last_key:  # most steps have one launch: no lookup per tensor
            launch = launches.get(key)
            if launch is None:
                launch = launches[key] = Launch([], [], [])
            last_key = key
        launch.items.append(item)
        launch.addresses += addresses
        launch.sizes.append(item[0].numel())
    if len(launches) > 1 or partial:
        flags, _ = case.prepare(np.float32, **{n: scalars[n] for n in case.scalars})  # as for any dtype
        if any(p.grid == "one" and (not p.when or flags[p.when]) for p in case.phases):
            return None
    return launches


def can_run(case: Case, work: list[tuple], scalars: dict[str, Any]) -> bool:
    """Whether :func:`run` computes this step of ``work`` as the plain path does (see :func:`plan`)."""
    return plan(case, work, scalars) is not None


def run(
    case: Case,
    work: list[tuple],
    scalars: dict[str, Any],
    *,
    block: int = BLOCK,
    groups: dict[tuple, Launch] | None = None,
) -> None:
    """One step of ``case`` for every tensor of ``work``, in place.

    ``work``: one ``(w, g, *states)`` per parameter, the states in the order of ``case.arrays`` (None for a
    state not kept: an option that is off), all accepted by
    :func:`takes`. ``scalars``: the step's values by name (the hyperparameters, ``t``, ``is_update``...:
    what the torch optimizer's step computes in Python; reductions over all tensors need not be there,
    the kernels compute them). The tensors are grouped by dtypes and device; each group is one launch
    per kernel of the case (``groups``: :func:`plan`'s, where the caller has it). Nothing is read back to the
    host.
    """
    missing = [n for n in case.scalars if n not in scalars]
    if missing:
        raise TypeError(
            f"triton_support.run: the step's scalars lack {', '.join(missing)}; this case reads"
            f" {', '.join(case.scalars)}. Received: {', '.join(scalars) or 'none'}"
        )
    if groups is None:
        groups = plan(case, work, scalars)
        if groups is None:
            raise ValueError(
                "triton_support.run: the kernels do not take these tensors (see takes), or a step that sums"
                " over all tensors has them in tensors of several dtypes"
            )
    given = {n: scalars[n] for n in case.scalars}
    for (w_dt, g_dt, s_dt, _), launch in groups.items():
        device = launch.items[0][0].device
        dt = torch.promote_types(torch.promote_types(w_dt, torch.float32), s_dt or torch.float32)
        flags, values = case.prepare(np.float64 if dt == torch.float64 else np.float32, **given)
        k_ = _to(torch.tensor(values or [0.0], dtype=dt), device)
        t = tables(case, launch, block)
        types = dict(
            NT=max(case.tensor_values, 1),
            DT=_TL[dt],
            W_DT=_TL[w_dt],
            G_DT=_TL[g_dt],
            S_DT=_TL[s_dt or dt],
            BLOCK=block,
        )
        for phase in case.phases:
            if phase.when and not flags[phase.when]:
                continue
            size = {"chunks": t.n_chunks, "tensors": t.n_tensors, "one": 1}[phase.grid]
            if size == 0:
                continue
            phase.kernel[(size,)](
                t.chunks,
                t.tensors,
                k_,
                t.tvals,
                t.gvals,
                t.partials,
                t.n_chunks,
                **{f: flags[f] for f in phase.flags},
                **types,
            )


@contextlib.contextmanager
def recorded(calls: list, *, block: int = BLOCK) -> Iterator[None]:
    """Within this block, each step the torch optimizers send to the kernels (their ``fused="triton"`` path)
    is appended to ``calls`` as ``(case, work, scalars)`` and cut into chunks of ``block`` elements (the
    tests take small chunks, to have tensors of several). For the tests and ``benchmarks/gpu_check.py``
    (not thread-safe: it replaces this module's ``run`` for the block's duration)."""
    original = globals()["run"]

    def spy(case: Case, work: list[tuple], scalars: dict[str, Any], *, block: int = block, **kw: Any) -> None:
        calls.append((case, work, scalars))
        original(case, work, scalars, block=block, **kw)

    globals()["run"] = spy
    try:
        yield
    finally:
        globals()["run"] = original
