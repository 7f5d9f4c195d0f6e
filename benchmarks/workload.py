"""The workload: fixed float32 tensor shapes, parameters and gradients, the same in every run with one seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the widths a matrix may have (its rows follow from its size)
MATRIX_WIDTHS = (256, 512, 768, 1024)
#: the share of all parameters held by vectors (biases, norms)
VECTOR_SHARE = 0.02


@dataclass(frozen=True)
class Size:
    """A benchmark size: the parameter count, the tensor count and the timed steps per implementation."""

    name: str
    n_params: int
    n_tensors: int
    repeats: int
    sweep_mib: int  # the buffer read between steps in the cold-cache variant


FULL = Size("full", n_params=16_600_000, n_tensors=200, repeats=20, sweep_mib=256)
QUICK = Size("quick", n_params=4_000_000, n_tensors=20, repeats=5, sweep_mib=128)


def tensor_shapes(n_params: int, n_tensors: int, seed: int = 0) -> list[tuple[int, ...]]:
    """A layer stack: matrices and vectors alternating, sizes drawn from ``seed``, about ``n_params`` in all.

    Vectors share ``VECTOR_SHARE`` of the parameters and matrices the rest, each in random proportion; a
    matrix's width comes from ``MATRIX_WIDTHS`` (capped by its size) and its rows from its size.
    """
    n_matrices = n_tensors // 2
    n_vectors = n_tensors - n_matrices
    if n_matrices < 1 or n_params < 2 * n_tensors:
        raise ValueError(f"need at least 2 tensors and 2 parameters per tensor (got {n_tensors}, {n_params})")
    rng = np.random.default_rng(seed)
    vector_budget = max(n_vectors, int(n_params * VECTOR_SHARE))
    vectors = _split(vector_budget, n_vectors, rng)
    matrices = _split(n_params - vector_budget, n_matrices, rng)
    widths = rng.choice(MATRIX_WIDTHS, size=n_matrices)
    matrix_shapes = iter(
        [(max(1, round(n / min(int(w), n))), min(int(w), n)) for n, w in zip(matrices, widths)]
    )
    vector_shapes = iter([(n,) for n in vectors])
    # n_vectors >= n_matrices: matrix, vector, matrix, ... (and a last vector when n_tensors is odd)
    return [
        next(matrix_shapes) if i % 2 == 0 and i < 2 * n_matrices else next(vector_shapes)
        for i in range(n_tensors)
    ]


def _split(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """``total`` split into ``parts`` positive integers in random proportions (each in [0.25, 1.75] of even)."""
    weights = rng.uniform(0.25, 1.75, size=parts)
    return [max(1, int(total * w / weights.sum())) for w in weights]


@dataclass(frozen=True)
class Workload:
    """Parameters and gradients (float32); every implementation runs on its own copies."""

    params: tuple[np.ndarray, ...]
    grads: tuple[np.ndarray, ...]
    seed: int

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [p.shape for p in self.params]

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params)

    def fresh_params(self) -> list[np.ndarray]:
        """Copies of the initial parameters (an optimizer updates them in place)."""
        return [p.copy() for p in self.params]

    def fresh_grads(self) -> list[np.ndarray]:
        """Copies of the gradients (the same every step)."""
        return [g.copy() for g in self.grads]


def make_workload(n_params: int, n_tensors: int, seed: int = 0) -> Workload:
    """The tensors of :func:`tensor_shapes`: parameters ~ N(0, 0.02^2), gradients ~ N(0, 0.01^2) without
    exact zeros (Adamax with epsilon 0, as the references need it, would divide 0 by 0 there)."""
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(n_params, n_tensors, seed)
    params = tuple(_normal(rng, s, 0.02) for s in shapes)
    grads = tuple(_normal(rng, s, 0.01) for s in shapes)
    for g in grads:
        g[g == 0] = np.float32(0.01)
    return Workload(params, grads, seed)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(scale)
    return x
