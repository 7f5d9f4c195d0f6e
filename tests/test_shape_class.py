"""The kernels of a rule that reads a tensor's shape take the tensors whose step is element-wise
(``compiler/shape_class.py``): torch's Muon's and optax's Muon's tensors that are not matrices (AdamW's
step), optax's Adafactor's tensors it does not factor, torch's Adafactor's and SM3's tensors of rank 0 or 1;
the others take the plain path in the same step. The
registry's kernel tests (test_fused.py, test_triton.py, test_reference_libraries.py) run these rules' kernels
against the plain path and the reference; here: the test itself, against a transcription of what the rules
say, a user's rule through ``optforge.load``, and the rules that keep no kernels."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from cases import RULES, compiled, kernel_takes
from drivers import assert_close, problem
from rulekit import load, steps

from optforge.compiler.dsl import (
    Eq,
    Ne,
    Rule,
    cols,
    g,
    machine_epsilon,
    matmul,
    maximum,
    rank,
    rows,
    sqrt,
    tensor_max,
    tensor_mean,
    tensor_norm,
    transpose,
    w,
    where,
)
from optforge.compiler.pipeline import compile_rule
from optforge.compiler.shape_class import kernel_class

SHAPES = [(), (1,), (7,), (3, 4), (4, 3), (1, 5), (2, 3, 4), (3, 1, 2), (0, 3)]


def test_the_registry_s_shape_reading_rules_take_what_their_rules_say():
    """Which registered rules have such kernels, and the tensors they take, as their equations say: a
    Muon's step is element-wise except for a matrix; optax's Adafactor's except for a tensor it factors
    (rank 2 or more, its second longest axis at least min_dim_size_to_factor, with factored on)."""
    found = {name for name, rule in RULES.items() if compiled(rule).kernel_class is not None}
    assert {"OptaxMuon", "TorchMuon", "OptaxAdafactor", "OptaxSm3"} <= found
    for name in ("OptaxMuon", "TorchMuon"):
        for shape in SHAPES:
            assert kernel_takes(RULES[name], shape, {}) == (len(shape) != 2), (name, shape)
    for shape in SHAPES:  # SM3: a vector's or a number's cover by its slices is itself
        assert kernel_takes(RULES["OptaxSm3"], shape, {}) == (len(shape) <= 1), shape
    rule = RULES["OptaxAdafactor"]
    for factored in (True, False):
        for min_dim in (None, 3, 128):
            hypers = {"factored": factored, "min_dim_size_to_factor": min_dim}
            for shape in SHAPES:
                split = factored and len(shape) >= 2 and min_dim is not None and sorted(shape)[-2] >= min_dim
                assert kernel_takes(rule, shape, hypers) == (not split), (hypers, shape)


@pytest.mark.parametrize("name", ["OptaxMuon", "TorchMuon", "OptaxAdafactor", "OptaxSm3"])
def test_the_generated_test_is_the_compiler_s(name):
    """The kernel modules' ``TAKES`` (Python printed from the test) agree with the test evaluated here, on
    shapes of ranks 0 to 3 and every value of the hyperparameters it reads."""
    import importlib

    rule = RULES[name]
    for backend in ("fused", "triton"):
        if backend == "triton":
            pytest.importorskip("triton")
        takes = importlib.import_module(f"optforge.generated.{backend}.{rule.module}").TAKES
        values = {"factored": (True, False), "min_dim_size_to_factor": (None, 3)}
        for combo in ({h: v for h, v in zip(takes.hypers, vs)} for vs in _product(values, takes.hypers)):
            for shape in SHAPES:
                got = bool(takes.test(shape, **combo))
                assert got == kernel_takes(rule, shape, combo), (backend, combo, shape)


def _product(values: dict, names: tuple) -> list:
    import itertools

    return list(itertools.product(*(values[n] for n in names)))


def matrix_rule() -> Rule:
    """A user's rule: a matrix steps by its orthogonalised gradient (one Newton-Schulz step), every other
    tensor by its gradient over its norm; a momentum for every tensor."""
    r = Rule("UserMatrixOrNorm", title="a matrix orthogonalised, the rest normalised")
    lr = r.learning_rate(0.1)
    m = r.state("m", 0, "momentum")
    r.assign(m, 0.9 * m + g, "momentum")
    matrix = r.let("matrix", Eq(rank, 2), "a matrix")
    x = r.let("x", m / (tensor_norm(m) + 1e-8), "normalised")
    y = r.let("y", 1.5 * x - 0.5 * matmul(matmul(x, transpose(x)), x), "one Newton-Schulz step")
    scale = r.let("scale", sqrt(rows / cols), "shape scaling")
    r.assign(w, w - lr * where(matrix, scale * y, x), "update")
    return r


def transcription(params0, grads, lr=0.1):
    ps = [p.copy() for p in params0]
    ms = [np.zeros_like(p) for p in params0]
    for gs in grads:
        for i, x in enumerate(gs):
            ms[i] = 0.9 * ms[i] + x
            n = ms[i] / (np.sqrt(np.sum(ms[i] ** 2)) + 1e-8)
            if ps[i].ndim == 2:
                step = np.sqrt(ps[i].shape[0] / ps[i].shape[1]) * (1.5 * n - 0.5 * n @ n.T @ n)
            else:
                step = n
            ps[i] = ps[i] - lr * step
    return ps


def test_a_user_s_rule_takes_its_element_wise_tensors_to_the_kernels(tmp_path, fused_tensors):
    """A user's rule with a matrix product for matrices: its kernels take the tensors that are not
    matrices, the plain path the matrices, in each step; every path equals a NumPy transcription."""
    r = matrix_rule()
    test, special = kernel_class(r)
    assert test == Ne(rank, 2) or sp.simplify_logic(sp.Xor(test, Ne(rank, 2))) is sp.false
    assert all(eq.target != "y" for eq in special.equations), "the matrix step is not the kernels'"
    mods = load(r, tmp_path)
    shapes = [(5,), (3, 4), (), (2, 3, 2)]
    params0, grads = problem(4, shapes=shapes, scales=[1.0, 1.0, 1.0, 1.0])
    want = transcription(params0, grads)
    paths = ["numpy", "numpy fused", "torch", "torch fused"]
    try:
        import triton  # noqa: F401

        paths.append("torch triton")
    except ImportError:
        pass
    for path in paths:
        before = fused_tensors[0]
        assert_close(
            steps(mods, r, params0, grads, path, **({"lr": 0.1} if "torch" in path else {})),
            want,
            1e-12,
            path,
        )
        if path.endswith("fused"):
            assert fused_tensors[0] - before == 4 * 3, f"{path}: the kernels took {fused_tensors[0] - before}"


def axis_rule() -> Rule:
    """A user's rule: a matrix's second moment factored into a row and a column (Adafactor's), a vector's or
    a number's in full; a floor at the dtype's machine epsilon; the row moment of a vector is the mean of
    its squares (a reduction over its one axis), its column moment the squares themselves (over an axis it
    lacks); the largest |g| over the last axis kept too."""
    r = Rule("UserAxisMoments", title="factored for a matrix, in full otherwise")
    lr = r.learning_rate(0.1)
    row = r.state("row", 0, "row moment")
    col = r.state("col", 0, "column moment")
    peak = r.state("peak", 0, "largest |g| over the last axis")
    r.assign(row, 0.5 * row + 0.5 * tensor_mean(g**2, axis=-1), "row moment")
    r.assign(col, 0.5 * col + 0.5 * tensor_mean(g**2, axis=-2), "column moment")
    r.assign(peak, maximum(peak, tensor_max(abs(g), axis=-1)), "peak")
    v = r.let("v", where(rank >= 2, row * col / tensor_mean(row, axis=-2), col), "second moment")
    r.assign(w, w - lr * g / (sqrt(maximum(v, machine_epsilon)) + 1e-3 * peak), "update")
    return r


def axis_transcription(params0, grads, lr=0.1):
    ps = [p.copy() for p in params0]
    rows = [np.zeros(p.shape[:-1] + (1,)) if p.ndim else np.zeros(()) for p in params0]
    cols = [
        np.zeros(p.shape[:-2] + (1,) + p.shape[-1:]) if p.ndim >= 2 else np.zeros(p.shape) for p in params0
    ]
    peaks = [np.zeros(p.shape[:-1] + (1,)) if p.ndim else np.zeros(()) for p in params0]

    def mean(x, axis):  # over an axis the tensor lacks: the values; over an empty one: 0
        if x.ndim < -axis:
            return x
        return np.sum(x, axis=axis, keepdims=True) / max(x.shape[axis], 1)

    for gs in grads:
        for i, x in enumerate(gs):
            rows[i] = 0.5 * rows[i] + 0.5 * mean(x**2, -1)
            cols[i] = 0.5 * cols[i] + 0.5 * mean(x**2, -2)
            top = np.max(np.abs(x), axis=-1, keepdims=True) if x.ndim else np.abs(x)
            peaks[i] = np.maximum(peaks[i], top)
            v = rows[i] * cols[i] / mean(rows[i], -2) if x.ndim >= 2 else cols[i]
            eps = np.finfo(ps[i].dtype).eps
            ps[i] = ps[i] - lr * x / (np.sqrt(np.maximum(v, eps)) + 1e-3 * peaks[i])
    return ps


def test_reductions_over_one_axis_and_the_machine_epsilon_are_the_kernels_for_vectors(
    tmp_path, fused_tensors
):
    """Below rank 2 a reduction over the last axis is one over the whole tensor (a per-tensor value the
    kernels compute) and one over the axis before it is the value itself, and a kernel's tensors share one
    dtype, whose machine epsilon is a value of the step: a user's rule that factors a matrix's moments has
    kernels for its vectors and numbers (as TorchAdafactor), the matrices take the plain path in the same
    step, and every path equals a NumPy transcription (float64, 4 steps; the row moment of a vector, a
    per-tensor state of the kernels, stored as the plain path stores it)."""
    r = axis_rule()
    test, special = kernel_class(r)
    assert sp.simplify_logic(sp.Xor(test, rank < 2)) is sp.false, test
    mods = load(r, tmp_path)
    shapes = [(5,), (3, 4), (), (2, 3, 2), (6,)]
    params0, grads = problem(4, shapes=shapes, scales=[1.0] * len(shapes))
    want = axis_transcription(params0, grads)
    paths = ["numpy", "numpy fused", "torch", "torch fused", "jax"]
    try:
        import triton  # noqa: F401

        paths.append("torch triton")
    except ImportError:
        pass
    for path in paths:
        before = fused_tensors[0]
        got = steps(mods, r, params0, grads, path, **({"lr": 0.1} if "torch" in path else {}))
        assert_close(got, want, 1e-12, path)
        if path.endswith("fused"):
            assert fused_tensors[0] - before == 4 * 3, f"{path}: the kernels took {fused_tensors[0] - before}"
    assert compiled(RULES["TorchAdafactor"]).kernel_class[0] == (rank < 2)


def test_a_rule_whose_every_tensor_reads_its_shape_has_no_kernels():
    """A rule whose every branch reads a value of the shape the kernels do not compute (here the rows of a
    matrix, or of a vector as a 1 x n matrix) has no tensor whose step is element-wise: no kernels."""
    r = Rule("UserRowsEverywhere", title="rows everywhere")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * where(rank >= 2, g * rows, g / rows), "update")
    assert kernel_class(r) is None


def test_a_rule_that_reads_no_shape_is_every_tensor_s():
    r = Rule("Plain", title="t")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * g, "step")
    assert kernel_class(r) is None and compile_rule(r).kernel_class is None
