"""Matrix operations on a tensor viewed as a matrix: ``matmul``, ``transpose``, ``rows``, ``cols`` and a
fixed-count iteration written as a Python loop in the rule (issue 15, item 2).

The shape pass on its own (what a product or a transpose makes of an ``m x n`` value; operands that do not
go together refused at the equation; a state may not take a Gram matrix's shape); a rule written as a
user would, with a Newton-Schulz iteration (Muon's), a transpose read element-wise, a reduction over an
axis of a Gram matrix, ``rows`` and ``cols``, run in NumPy, JAX and torch against a NumPy transcription of
its equations written without the compiler (float64, 1e-12) on tensors of ranks 0 to 3, a tall and a wide
matrix and an empty one; and the in-place backends writing the products into buffers of their own shapes,
allocating nothing in proportion to the parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close
from rulekit import load, steps

from optforge.compiler.dsl import (
    Eq,
    MatrixProduct,
    Rule,
    Transposed,
    cols,
    g,
    matmul,
    maximum,
    rank,
    rows,
    sqrt,
    tensor_mean,
    tensor_norm,
    transpose,
    w,
    where,
)
from optforge.compiler.errors import RuleError
from optforge.compiler.passes.shape import FULL, ShapeError, join, shape_of

LR = 0.05
A_, B_, C_ = 3.4445, -4.7750, 2.0315
SHAPES = [(), (7,), (5, 3), (3, 5), (2, 3, 4), (0, 3)]


# -- the pass on its own -----------------------------------------------------------------------------


def test_a_product_and_a_transpose_have_the_shapes_of_linear_algebra():
    x, r, gram = sp.symbols("x r gram")
    shapes = {"x": FULL, "r": frozenset({-1}), "gram": ("m", "m"), "lr": None}
    assert shape_of(Transposed(x), shapes) == ("n", "m")
    assert shape_of(MatrixProduct(x, Transposed(x)), shapes) == ("m", "m")
    assert shape_of(MatrixProduct(Transposed(x), x), shapes) == ("n", "n")
    assert shape_of(MatrixProduct(gram, x), shapes) == FULL  # back to the parameter's shape: a frozenset
    assert shape_of(MatrixProduct(Transposed(r), x), shapes) == frozenset(
        {-2}
    )  # a row vector times X: a column
    assert shape_of(sp.Symbol("lr") * gram + gram, shapes) == ("m", "m")
    assert join(frozenset({-1}), ("m", "m")) == ("m", "m")  # a column of m broadcasts over m x m
    with pytest.raises(ShapeError, match="do not broadcast"):
        join(FULL, ("m", "m"))
    with pytest.raises(ShapeError, match="columns of the first are not the rows of the second"):
        shape_of(MatrixProduct(x, x), shapes)


def test_operands_that_do_not_go_together_are_an_error_at_the_equation():
    R = Rule("BadProduct", title="t")
    lr = R.learning_rate(LR)
    R.assign(w, w - lr * matmul(g, g), "update")
    with pytest.raises(RuleError, match=r"BadProduct.*equation 1 .*columns of the first are not the rows"):
        _compiled(R)
    R = Rule("BadSum", title="t")
    lr = R.learning_rate(LR)
    gram = R.let("gram", matmul(g, transpose(g)), "Gram matrix")
    R.assign(w, w - lr * (g + gram), "update")
    with pytest.raises(RuleError, match=r"BadSum.*`w <- .*`.*m x n and one of shape m x m do not broadcast"):
        _compiled(R)


def test_a_state_may_not_take_a_gram_matrix_shape():
    R = Rule("GramState", title="t")
    lr = R.learning_rate(LR)
    s = R.state("s", 0, "a running Gram matrix")
    R.assign(s, s / 2 + matmul(g, transpose(g)), "Gram")
    R.assign(w, w - lr * matmul(s, g), "update")
    with pytest.raises(RuleError, match=r"the state `s` would be stored with shape m x m"):
        _compiled(R)


def _compiled(rule):
    from optforge.compiler import compile_rule

    return compile_rule(rule)


# -- a rule as a user writes it, in every backend ------------------------------------------------------


def _orthogonalised() -> Rule:
    R = Rule("Orthogonal", title="momentum orthogonalised by Newton-Schulz, as Muon does")
    lr = R.learning_rate(LR)
    m = R.state("m", 0, "momentum")
    R.assign(m, 0.9 * m + g, "momentum")
    X = R.let("X", m / (tensor_norm(m) + 1e-7), "Frobenius normalisation")
    for k in range(3):  # a fixed-count iteration: a Python loop in the rule
        A = R.let(f"A{k}", matmul(X, transpose(X)), "Gram matrix")
        B = R.let(f"B{k}", B_ * A + matmul(C_ * A, A), "polynomial")
        X = R.let(f"X{k + 1}", A_ * X + matmul(B, X), "Newton-Schulz step")
    # a Gram matrix reduced over one axis, and a transpose read element by element
    gram = R.let("gram", matmul(transpose(X), X), "X^T X")  # a let: its own buffer (n x n)
    spread = R.let("spread", tensor_mean(gram, axis=-1), "mean of X^T X over its rows")
    tx = R.let("tx", transpose(transpose(g)) * where(Eq(rank, 2), 1, 0.5), "g, twice transposed")
    scale = R.let("scale", sqrt(maximum(1, cols / maximum(rows, 1))), "width scaling")
    R.assign(w, w - lr * (scale * X + 0.01 * tx * matmul(X, spread)), "update")  # X (n x 1): m x 1
    return R


def _matrix(x):
    """``x`` viewed as a matrix, as the DSL defines it: below rank 2, ``1 x n`` (a 0-d value ``1 x 1``)."""
    return x.reshape((1,) * (2 - x.ndim) + x.shape) if x.ndim < 2 else x


def _transcription(p, gs):
    """The rule's equations in NumPy, written from the DSL's definitions (not from generated code)."""
    shape = p.shape
    p, m = _matrix(p.copy()), 0.0
    for x in gs:
        x = _matrix(x)
        m = 0.9 * m + x
        X = m / (np.sqrt(np.sum(m**2)) + 1e-7)
        for _ in range(3):
            A = X @ np.swapaxes(X, -1, -2)
            B = B_ * A + (C_ * A) @ A
            X = A_ * X + B @ X
        gram = np.swapaxes(X, -1, -2) @ X  # n x n
        spread = gram.sum(axis=-1, keepdims=True) / max(gram.shape[-1], 1)  # n x 1
        tx = x * (1 if len(shape) == 2 else 0.5)
        r = shape[-2] if len(shape) >= 2 else 1
        c = shape[-1] if len(shape) >= 1 else 1
        scale = np.sqrt(max(1, c / max(r, 1)))
        p = p - LR * (scale * X + 0.01 * tx * (X @ spread))
    return p.reshape(shape)


@pytest.fixture(scope="module")
def orthogonal(tmp_path_factory):
    rule = _orthogonalised()
    return rule, load(rule, tmp_path_factory.mktemp("orthogonal"))


@pytest.mark.parametrize("path", ["numpy", "jax", "torch"])
def test_a_newton_schulz_rule_equals_a_transcription(orthogonal, path):
    rule, mods = orthogonal
    rng = np.random.default_rng(7)
    params0 = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    grads = [
        [np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3)) for s in SHAPES] for _ in range(6)
    ]
    want = [_transcription(p, [gs[i] for gs in grads]) for i, p in enumerate(params0)]
    hypers = {"lr" if path == "torch" else "learning_rate": LR}
    got = steps(mods, rule, params0, grads, path, **hypers)
    for a, shape in zip(got, SHAPES):
        assert a.shape == shape
    assert_close(got, want, 1e-12, f"Orthogonal ({path})")


def test_products_go_into_buffers_of_their_own_shapes(orthogonal):
    """NumPy and torch write each product into a scratch buffer of its shape (``m x m`` for ``X X^T``), never
    into one of its operands', and a float32 step allocates nothing in proportion to the parameters."""
    import tracemalloc

    rule, mods = orthogonal
    source = open(mods["numpy"].__file__).read()
    assert 'scope="element/mm"' in source and "numpy_support.matmul(" in source
    assert "fused" not in mods and "triton" not in mods  # the kernels do not take matrix operations (yet)
    rng = np.random.default_rng(8)
    shapes = [(300, 400), (2_000, 60), (7,)]  # X^T X is n x n: a vector's would be n^2
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = getattr(mods["numpy"], rule.name)()
    state = opt.init(params)
    params, state = opt.step(params, grads, state)  # sizes the scratch buffers
    tracemalloc.start()
    try:
        params, state = opt.step(params, grads, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert params[0].dtype == np.float32
    assert peak < 120_000 * 4 / 10, f"a step allocated up to {peak} bytes"


# -- a value only a test of the shape reads: computed only for the tensors that take that branch ----------


def test_a_value_read_under_a_test_of_the_shape_is_computed_only_there():
    """``passes/shape_guards.py``: a let read only where ``rank == 2`` becomes ``where(rank == 2, value,
    unused)``; one read anywhere else is left as it is."""
    from optforge.compiler.ir import Unused

    R = Rule("ShapeGuarded", title="t")
    lr = R.learning_rate(LR)
    gram = R.let("gram", matmul(g, transpose(g)), "read only for a matrix")
    both = R.let("both", 2 * g, "read for every tensor")
    R.assign(w, w - lr * (both + where(Eq(rank, 2), matmul(gram, g), 0)), "update")
    program = _compiled(R)
    body = {a.target: a.expr for c in program.cases for a in c.body}
    assert isinstance(body["gram"], sp.Piecewise) and isinstance(body["gram"].args[-1][0], Unused)
    assert body["gram"].args[0][1] == Eq(sp.Symbol("rank"), 2)
    assert not isinstance(body["both"], sp.Piecewise)


def test_muon_forms_only_the_smaller_gram_matrix_and_none_for_other_tensors():
    """OptaxMuon's first NumPy step, which sizes the scratch buffers, on a tall and a wide matrix and a
    tensor of rank 3 (Adam's): the Gram matrices are n x n for the tall one and m x m for the wide one
    (4000 x 4000, 128 MB in float64, had they been the larger), none for the rank-3 tensor."""
    import tracemalloc

    import optforge.generated.numpy as generated

    rng = np.random.default_rng(9)
    shapes = [(4000, 3), (3, 4000), (4, 500, 3)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal(s) for s in shapes]
    opt = generated.OptaxMuon(learning_rate=0.02)
    state = opt.init(params)
    tracemalloc.start()
    try:
        params, state = opt.step(params, grads, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_tensor = 12_000 * 8
    assert peak < 20 * one_tensor, f"the first step allocated up to {peak} bytes (one tensor is {one_tensor})"


# -- what a review found, each with a rule that failed before -----------------------------------------------


def _hazards() -> Rule:
    R = Rule("Hazards", title="products into their own operand's buffer, a transpose kept, a Gram row")
    lr = R.learning_rate(LR)
    m = R.state("m", 0, "momentum")
    R.assign(m, 0.5 * m + g, "momentum")
    X = R.let("X", 2 * g, "X")
    A = R.let("A", matmul(g, transpose(m)), "g m^T (m x m): the gradient and a state")
    R.assign(X, matmul(A, X), "X <- A X: the product's operand is its target")
    T = R.let("T", transpose(X), "X^T, kept by name")
    R.assign(X, 3 * X, "X overwritten after T took it")
    row = R.let("row", tensor_mean(matmul(g, transpose(g)), axis=-1), "a Gram matrix's row means")
    R.assign(w, w - lr * (X + transpose(T) + row * g), "update")
    return R


def _hazards_transcription(p, gs):
    shape = p.shape
    p, m = _matrix(p.copy()), 0.0
    for x in gs:
        x = _matrix(x)
        m = 0.5 * m + x
        X = 2 * x
        A = x @ np.swapaxes(m, -1, -2)
        X = A @ X
        T = np.swapaxes(X, -1, -2).copy()
        X = 3 * X
        G = x @ np.swapaxes(x, -1, -2)
        row = G.sum(axis=-1, keepdims=True) / max(G.shape[-1], 1)
        p = p - LR * (X + np.swapaxes(T, -1, -2) + row * x)
    return p.reshape(shape)


@pytest.mark.parametrize("path", ["numpy", "jax", "torch"])
def test_products_transposes_and_gram_rows_at_every_rank(tmp_path, path):
    """``X <- A @ X`` into X's own buffer (torch wrote the product over its operand), a transpose kept by
    name while its buffer is overwritten (NumPy and torch read the new values through the view), the
    row means of a Gram matrix at rank 0 and 1 (a ``1 x 1`` result for a ``(1,)`` row: an error): every
    backend equals the transcription (float64, 1e-12)."""
    rule = _hazards()
    mods = load(rule, tmp_path)
    rng = np.random.default_rng(10)
    params0 = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s)) for s in SHAPES] for _ in range(3)]
    want = [_hazards_transcription(p, [gs[i] for gs in grads]) for i, p in enumerate(params0)]
    got = steps(mods, rule, params0, grads, path, **{"lr" if path == "torch" else "learning_rate": LR})
    assert [a.shape for a in got] == SHAPES
    assert_close(got, want, 1e-12, f"Hazards ({path})")


def test_torch_products_of_a_wider_state_and_bfloat16_parameters(tmp_path):
    """torch does not promote a product's operands: float32 parameters with float64 state, and bfloat16
    parameters, step (a RuntimeError before), as NumPy's promotion gives."""
    import torch

    rule = _hazards()
    mods = load(rule, tmp_path)
    cls = getattr(mods["torch"], rule.name)
    rng = np.random.default_rng(11)
    for dtype, state_dtype in ((torch.float32, torch.float64), (torch.bfloat16, None)):
        p = torch.nn.Parameter(torch.tensor(rng.standard_normal((3, 5)), dtype=dtype))
        opt = cls([p], lr=LR, **({"state_dtype": state_dtype} if state_dtype else {}))
        p.grad = torch.tensor(rng.standard_normal((3, 5)), dtype=dtype)
        opt.step()
        assert p.dtype == dtype and torch.isfinite(p).all()


# -- torch.compile with inductor ----------------------------------------------------------------------


def test_a_scaled_addition_of_a_product_under_inductor_keeps_its_scale():
    """torch 2.13's inductor rewrites ``add(mm(a, b), c, alpha=k)``, ``add(c, mm(a, b), alpha=k)`` and
    ``c.add_(mm(a, b), alpha=k)`` into ``addmm`` and drops ``k`` (silently: 10.8 apart on a 4 x 4 product);
    the torch modules print such additions (``add_scaled``) of the products ``torch_support.matmul`` forms:
    OptaxMuon's step compiled with inductor was NaN (Newton-Schulz's ``B = b A + (c A) A``). Each form of
    a product from ``torch_support.matmul``, compiled with inductor, equals its eager value (failed
    before ``matmul`` formed a product as a batch of one while compiling). A whole training step of each
    matrix rule compiled with inductor was measured against eager (README), not run here (20 CPU s each)."""
    import torch

    from optforge.runtime import torch_support

    def forms(a, b, c):
        first = torch.add(torch_support.matmul(a, b), c, alpha=-4.775)
        second = torch.add(c, torch_support.matmul(a, b, out=torch.empty_like(c)), alpha=-4.775)
        third = c.clone()
        third.add_(torch_support.matmul(a, b), alpha=2.0315)
        return first, second, third

    torch._dynamo.reset()
    args = [torch.tensor(np.random.default_rng(k).normal(size=(4, 4))) for k in range(3)]
    for got, want in zip(torch.compile(forms, backend="inductor", fullgraph=True)(*args), forms(*args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
