"""Reductions over the axes a tensor's lengths choose (``largest_axis``, ``second_largest_axis``: optax's
Adafactor factors over the two longest axes of each tensor, wherever they are), and state shaped like them."""

from __future__ import annotations

import numpy as np
from drivers import assert_close
from rulekit import load, steps

from optforge.compiler.dsl import (
    Rule,
    g,
    largest_axis,
    rank,
    second_largest_axis,
    sqrt,
    tensor_mean,
    w,
    where,
)
from optforge.runtime import common

#: the longest axis first, last, in the middle, tied (numpy.argsort's order: the later one), and below rank 2
SHAPES = [(3, 5), (5, 3), (4, 4), (2, 7, 3), (7, 2, 3), (7,), ()]


def factored() -> Rule:
    r = Rule("BySize", title="a second moment factored over each tensor's two longest axes")
    lr = r.learning_rate(0.1)
    row = r.state("row", 0, "mean of g^2 over the longest axis")
    col = r.state("col", 0, "mean of g^2 over the second longest axis")
    r.assign(row, row + tensor_mean(g**2 + 1e-30, axis=largest_axis), "row")
    r.assign(col, col + tensor_mean(g**2 + 1e-30, axis=second_largest_axis), "column")
    v = r.let("v", where(rank >= 2, row * col / tensor_mean(row, axis=second_largest_axis), col), "estimate")
    r.assign(w, w - lr * g / sqrt(v), "update")
    return r


def transcription(params0, grads):
    """The rule, with the axes as optax's ``_factored_dims`` chooses them (``np.argsort`` of the shape)."""
    params = [p.copy() for p in params0]
    rows, cols = [0.0] * len(params), [0.0] * len(params)
    for gs in grads:
        for i, x in enumerate(gs):
            if x.ndim >= 2:
                d1, d0 = (int(a) for a in np.argsort(x.shape)[-2:])
                rows[i] = rows[i] + np.mean(x**2 + 1e-30, axis=d0, keepdims=True)
                cols[i] = cols[i] + np.mean(x**2 + 1e-30, axis=d1, keepdims=True)
                v = rows[i] * cols[i] / np.mean(rows[i], axis=d1, keepdims=True)
            else:
                cols[i] = cols[i] + x**2 + 1e-30
                v = cols[i]
            params[i] = params[i] - 0.1 * x / np.sqrt(v)
    return params


def test_a_reduction_over_the_longest_axes_in_every_backend(tmp_path):
    rule = factored()
    mods = load(rule, tmp_path)
    rng = np.random.default_rng(0)
    params0 = [rng.normal(size=s) for s in SHAPES]
    grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(4)]
    want = transcription(params0, grads)
    for path in ("numpy", "jax", "torch"):
        assert_close(steps(mods, rule, params0, grads, path), want, 1e-12, path)
    # the row of each tensor is stored with its longest axis of length 1 (m + n values of a matrix)
    state = mods["numpy"].BySize().init([p.copy() for p in params0])
    for p, row in zip(params0, state.row):
        want_shape = list(p.shape)
        if p.ndim:
            want_shape[int(np.argsort(p.shape)[-1])] = 1
        assert row.shape == tuple(want_shape), (p.shape, row.shape)


def test_the_axes_are_numpy_argsorts():
    for shape in [*SHAPES, (4, 4, 4), (1, 9, 9, 2), (2, 2, 1, 1), (3, 2, 1, 1), (3, 3, 64, 64)]:
        order = np.argsort(shape)
        for k in (1, 2):
            got = common.axis_by_size(shape, k)
            if len(shape) >= k:
                assert got == int(order[-k]) - len(shape), (shape, k)
            else:
                assert -got > len(shape), (shape, k)  # an axis it lacks: the values stay as they are
