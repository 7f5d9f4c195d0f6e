"""Numba helpers of the generated fused kernels (``optforge.generated.fused``): tensors by address.

A kernel that updates many tensors in one call takes a table of their addresses (``int64``) and views
each as an array with ``numba.carray(pointer(address), size, dtype)``. One call per thread and step
replaces one call per tensor, whose Python side (views, slices, the dispatch of seven arguments) cost
about 4 us a tensor: 2 ms a step on 200 tensors, a quarter of the memory-bound update itself.

The callers check every array first (dtype, C order, size): a kernel trusts its table.

The threads are one function's, :func:`drive`: compiled once (for each dtype of the packed values), it
hands each thread its share of the rows and calls the case's row kernel on each row by its address. A
row kernel is a C callback (``numba.cfunc`` of signature :data:`ROW`), serial: Numba's parallel
compilation (the ``prange`` loop, its gufunc) is paid once for every rule, not once for every kernel:
a rule's first fused step compiles in 35% to 60% of the time it took with a parallel kernel of its own
(OptaxAdan 5.1 s to 3.1 s, OptaxNovoGrad 4.5 s to 1.6 s on the README's 2-core machine), and the steps
take the same time (the call through a pointer is nothing beside a row's element loop)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import literal_unroll, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def pointer(typingctx, address):
    """The integer ``address`` as a ``void*`` (what ``numba.carray`` takes)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


def cacheable(kernel, name: str, *conditions) -> "numba.core.registry.CPUDispatcher":
    """``kernel`` (a reduction, compiled apart) under a name that is the same in every process, so that a
    kernel that calls it is found in Numba's on-disk cache. Numba keys a cached closure by the pickle of
    its closure's values, and a dispatcher pickles with an id it draws at random (``uuid4``) unless one is
    set: every process compiled such a kernel again (4 to 16 s for a NovoGrad step's kernels)."""
    kernel._set_uuid(f"optforge:{name}{conditions!r}")
    return kernel


@numba.njit(nogil=True, cache=True)
def address(a):  # pragma: no cover - compiled
    """The address of an array's first element (0 for None: a state that is not kept)."""
    return 0 if a is None else np.int64(a.ctypes.data)


@numba.njit(nogil=True, cache=True)
def addresses(table, i, *arrays):  # pragma: no cover - compiled
    """Row ``i`` of ``table``: the address of each array (0 for None: a state not kept). One function for
    every rule (compiled once for each kind of row: how many arrays, their dtype and rank, which are None:
    0.3 s each, once on a machine), in about 0.5 us a tensor; building the row in Python (``a.ctypes.data``)
    took 8 us, and passing flat views (``a.ravel()``, one kind for every rank) 1 us."""
    k = 0
    for a in literal_unroll(arrays):
        table[i, k] = address(a)
        k += 1


#: a row kernel's signature: ``kernel(lo, hi, row, k)`` updates elements ``lo`` to ``hi`` of the tensor whose
#: arrays' addresses are at ``row`` (its row of the table), with the step's packed values at ``k``
ROW = types.void(types.int64, types.int64, types.voidptr, types.voidptr)


@intrinsic
def _call_row(typingctx, kernel, lo, hi, row, k):
    """Calls the :data:`ROW` function at address ``kernel``."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i64, ptr = ir.IntType(64), cgutils.voidptr_t
        function = builder.inttoptr(
            args[0], ir.FunctionType(ir.VoidType(), [i64, i64, ptr, ptr]).as_pointer()
        )
        builder.call(
            function, [args[1], args[2], builder.inttoptr(args[3], ptr), builder.inttoptr(args[4], ptr)]
        )
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True, parallel=True)
def drive(kernel, rows, bounds, table, k):  # pragma: no cover - compiled
    """``kernel`` (a :data:`ROW` function's address) on every row ``(t, lo, hi)`` of ``rows``, thread ``i``
    taking the rows ``bounds[i]`` to ``bounds[i + 1]``: ``table[t]`` holds tensor ``t``'s arrays' addresses,
    ``k`` the step's packed values."""
    width = table.shape[1] * 8
    base = np.int64(table.ctypes.data)  # signed: Numba adds an unsigned and a signed integer as floats
    values = np.int64(k.ctypes.data)
    for p in numba.prange(bounds.shape[0] - 1):  # each thread its share of the rows
        for r in range(bounds[p], bounds[p + 1]):
            _call_row(kernel, rows[r, 1], rows[r, 2], base + rows[r, 0] * width, values)
