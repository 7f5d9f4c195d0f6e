"""Numba helpers of the generated fused kernels (``optforge.generated.fused``): tensors by address.

A kernel that updates many tensors in one call takes a table of their addresses (``int64``) and views
each as an array with ``numba.carray(pointer(address), size, dtype)``. One call per thread and step
replaces one call per tensor, whose Python side (views, slices, the dispatch of seven arguments) cost
about 4 us a tensor: 2 ms a step on 200 tensors, a quarter of the memory-bound update itself.

The callers check every array first (dtype, C order, size): a kernel trusts its table.
"""

from __future__ import annotations

import numba
import numpy as np
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
    every rule (compiled once for each kind of row: how many arrays, their dtype, which are None), in
    about 0.5 us a tensor; building the row in Python (``a.ctypes.data``) took 8 us."""
    k = 0
    for a in literal_unroll(arrays):
        table[i, k] = address(a)
        k += 1
