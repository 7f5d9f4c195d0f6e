"""Reductions over one axis (a row, a column) and state shaped like them (issue 15, item 1).

The shape pass on its own (``passes/shape.py``: which axes a value has reduced, a state's shape inferred
from what it is assigned, a whole-tensor reduction of a reduced value refused); a rule written as a user
would, with every axis reduction, the rank and the machine epsilon, run in NumPy, JAX and torch against a
NumPy transcription of its equations written without the compiler (float64, 1e-12), on tensors of ranks
0 to 3 and an empty one; and what a state with an axis reduced costs (``optforge show``, the benchmark's
bytes per parameter).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close
from rulekit import load, steps

from optforge.compiler.dsl import (
    AxisMean,
    Rule,
    g,
    machine_epsilon,
    maximum,
    rank,
    sqrt,
    tensor_max,
    tensor_mean,
    tensor_norm,
    tensor_sum,
    w,
    where,
)
from optforge.compiler.errors import RuleError
from optforge.compiler.passes.shape import FULL, join, shape_of

LR = 0.1
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (0, 3)]


# -- the pass on its own -----------------------------------------------------------------------------


def test_shapes_join_as_broadcasting_does():
    row, col = frozenset({-1}), frozenset({-2})
    assert join(row, col) == FULL  # a row times a column is a matrix
    assert join(row, None) == row  # a number broadcasts against anything
    assert join(row, frozenset({-1, -2})) == row
    shapes = {"g": FULL, "r": row, "c": col, "lr": None}
    r, c, lr = sp.symbols("r c lr")
    assert shape_of(lr * r, shapes) == row
    assert shape_of(r * c, shapes) == FULL
    assert shape_of(AxisMean(g**2, sp.Integer(-2)), shapes) == col
    assert shape_of(AxisMean(r, sp.Integer(-2)), shapes) == frozenset({-1, -2})


def _factored() -> Rule:
    R = Rule("Shapes", title="t")
    lr = R.learning_rate(LR)
    row = R.state("row", 0, "row moment")
    col = R.state("col", 0, "column moment")
    full = R.state("full", 0, "a matrix of them")
    R.assign(row, row / 2 + tensor_mean(g**2, axis=-1), "row")
    R.assign(col, col / 2 + tensor_mean(g**2, axis=-2), "column")
    R.assign(full, row * col, "outer product")
    R.assign(w, w - lr * g / sqrt(1 + full), "update")
    return R


def test_a_state_takes_the_shape_of_what_it_is_assigned():
    from cases import compiled

    program = compiled(_factored())
    reduced = {s.name: s.reduced for s in program.states}
    assert reduced["row"] == (-1,) and reduced["col"] == (-2,) and reduced["full"] == ()


def test_a_whole_tensor_reduction_of_a_reduced_value_is_an_error_at_its_equation():
    from optforge.compiler.pipeline import compile_rule

    R = Rule("WholeOfRow", title="t")
    lr = R.learning_rate(LR)
    row = R.state("row", 0, "row moment")
    R.assign(row, row + tensor_sum(g, axis=-1), "row")
    R.assign(w, w - lr * tensor_mean(row) * g, "update")
    with pytest.raises(RuleError) as info:
        compile_rule(R)
    text = str(info.value)
    assert "equation 2 `w <- w - " in text and "`sum(row)` reduces a whole tensor" in text
    assert "tensor_mean(x, axis=-2)" in text  # the hint


@pytest.mark.parametrize("axis", [0, 1, -1.0, True, "rows"])
def test_an_axis_is_a_negative_int(axis):
    with pytest.raises(TypeError, match=r"tensor_mean: axis must be a negative int .* Received: axis="):
        tensor_mean(g, axis=axis)


def test_a_reduced_state_costs_its_rows_and_columns_not_its_elements():
    from cases import compiled

    from optforge.compiler.show import show
    from optforge.compiler.traffic import bytes_per_param
    from optforge.rules import registry

    program = compiled(registry()["TorchAdafactor"])
    assert bytes_per_param(program) == 12  # w and g read, w written: the moments are m + n values
    text = show(program)
    assert "one per row: m of an m x n matrix" in text and "one per column: n of an m x n matrix" in text


# -- a rule as a user writes it, in every backend ------------------------------------------------------


def _every_axis_reduction() -> Rule:
    R = Rule("AxisMix", title="every reduction over one axis")
    lr = R.learning_rate(LR)
    a = R.state("a", 0, "decayed row sums of |g|")
    b = R.state("b", 0, "running column maximum of |g|")
    R.assign(a, a / 2 + tensor_sum(abs(g), axis=-1), "row sums")
    R.assign(b, maximum(b, tensor_max(abs(g), axis=-2)), "column maxima")
    norm = R.let("norm", tensor_norm(g, axis=-1), "row norms")
    v = R.let(
        "v", where(rank >= 2, a * b / (1 + tensor_mean(a, axis=-2)), a + b), "a matrix's, or a vector's"
    )
    R.assign(w, w - lr * g / (1 + v + norm + machine_epsilon), "update")
    return R


def _over(x, axis, reduce):
    """NumPy's reduction over ``axis`` kept with length 1; an axis the array lacks has length 1."""
    if x.ndim < -axis:
        return x.copy()
    if x.shape[axis] == 0:  # an empty axis: the sum 0, the mean 0 (the DSL's), the maximum -inf
        shape = list(x.shape)
        shape[axis] = 1
        return np.full(shape, -np.inf if reduce is np.max else 0.0)
    return reduce(x, axis=axis, keepdims=True)


def _transcription(p, gs):
    """The rule's equations in NumPy, written from the DSL's definitions (not from generated code)."""
    p = p.copy()
    a = b = 0.0
    for x in gs:
        a = a / 2 + _over(np.abs(x), -1, np.sum)
        b = np.maximum(b, _over(np.abs(x), -2, np.max))
        norm = np.sqrt(_over(x**2, -1, np.sum))
        v = a * b / (1 + _over(a, -2, np.mean)) if p.ndim >= 2 else a + b
        p = p - LR * x / (1 + v + norm + np.finfo(p.dtype).eps)
    return p


@pytest.fixture(scope="module")
def axis_mix(tmp_path_factory):
    rule = _every_axis_reduction()
    return rule, load(rule, tmp_path_factory.mktemp("axis_mix"))


@pytest.mark.parametrize("path", ["numpy", "jax", "torch", "numpy fused", "torch fused", "torch triton"])
def test_every_axis_reduction_equals_a_transcription(axis_mix, path, fused_tensors):
    """Every path equals the transcription; the kernels take the tensors of rank 0 and 1 (below rank 2 a
    reduction over the last axis is one over the whole tensor, over the axis before it the value itself),
    the plain path the others, in the same step."""
    rule, mods = axis_mix
    rng = np.random.default_rng(5)
    params0 = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    grads = [
        [np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3)) for s in SHAPES] for _ in range(8)
    ]
    want = [_transcription(p, [gs[i] for gs in grads]) for i, p in enumerate(params0)]
    hypers = {"lr" if path.startswith("torch") else "learning_rate": LR}
    got = steps(mods, rule, params0, grads, path, **hypers)
    for a, b, shape in zip(got, want, SHAPES):
        assert a.shape == shape
    assert_close(got, want, 1e-12, f"AxisMix ({path})")
    if path.endswith("fused"):
        assert fused_tensors[0] == 8 * sum(len(s) < 2 for s in SHAPES), fused_tensors[0]


def test_the_state_is_stored_at_its_reduced_shape(axis_mix):
    rule, mods = axis_mix
    opt = getattr(mods["numpy"], rule.name)()
    params = [np.zeros(s) for s in SHAPES]
    state = opt.init(params)
    assert [x.shape for x in state.a] == [(), (1,), (5, 1), (2, 3, 1), (0, 1)]
    assert [x.shape for x in state.b] == [(), (7,), (1, 3), (2, 1, 4), (1, 3)]
    assert getattr(mods["numpy"], rule.name).kernel_tensors == "rank < 2"  # the others: plain path


def test_an_axis_reduction_in_a_branch_of_a_select(tmp_path):
    """``where(row > 0.5, row / 2, tensor_mean(g**2, axis=-1))``: the mean over the whole axis, whatever
    elements the branch takes (NumPy computes a select's branches under masks); every backend equals a
    transcription."""
    R = Rule("AxisInBranch", title="t")
    lr = R.learning_rate(LR)
    row = R.state("row", 0, "row moment")
    R.assign(row, where(row > 0.5, row / 2, tensor_mean(g**2, axis=-1)), "row")
    R.assign(w, w - lr * g / sqrt(1 + row), "update")
    mods = load(R, tmp_path)
    rng = np.random.default_rng(6)
    shapes = [(4, 3), (5,)]
    params0 = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]

    def transcription(p, gs):
        p, r = p.copy(), 0.0
        for x in gs:
            r = np.where(r > 0.5, r / 2, _over(x**2, -1, np.mean))
            p = p - LR * x / np.sqrt(1 + r)
        return p

    want = [transcription(p, [gs[i] for gs in grads]) for i, p in enumerate(params0)]
    for path in ("numpy", "jax", "torch"):
        hypers = {"lr" if path == "torch" else "learning_rate": LR}
        assert_close(steps(mods, R, params0, grads, path, **hypers), want, 1e-12, f"AxisInBranch ({path})")


def test_jax_reads_the_parameters_dtype_after_a_weight_decay():
    """The machine epsilon (and size, rank) of a bfloat16 parameter is bfloat16's, also after the weight
    decay wrote ``w`` and with a float32 array for the learning rate (JAX's increment form had read the
    dtype of ``w + update``: float32's epsilon, updates 300 times larger)."""
    import jax.numpy as jnp

    from optforge.generated.jax import torch_adafactor

    params = [jnp.ones((4, 3), jnp.bfloat16)]
    grads = [jnp.full((4, 3), 1e-4, jnp.bfloat16)]
    out = []
    for lr in (0.5, jnp.float32(0.5)):  # 1 - lr*weight_decay = 0.9375, exact in bfloat16 too
        tx = torch_adafactor(learning_rate=lr, weight_decay=0.125)
        updates, _ = tx.update(grads, tx.init(params), params)
        out.append(np.asarray(updates[0], np.float64))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-2)


def test_a_value_that_is_a_row_in_one_case_and_a_matrix_in_another(tmp_path):
    """``v = where(h != 0, row, g**2)``: a row where the case says so, the tensor's shape in the other; each
    case writes it into registers of its own shape (torch resized a buffer of the tensor's shape and
    warned, every step, before), and every backend equals a transcription."""
    import warnings

    from optforge.compiler.dsl import Ne

    R = Rule("RowOrMatrix", title="t")
    lr = R.learning_rate(LR)
    h = R.hyper("h", 0.5, "[0, 1]", "weight of the row moment (0: none)")
    row = R.state("row", 0, "row moment")
    R.assign(row, row * h + tensor_mean(g**2, axis=-1), "row", when=Ne(h, 0))
    v = R.let("v", where(Ne(h, 0), row, g**2), "the row's, or the square")
    R.assign(w, w - lr * g / sqrt(1 + v + row), "update")
    mods = load(R, tmp_path)
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (5,)]
    params0 = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]

    def transcription(p, gs, hv):
        p, r = p.copy(), 0.0
        for x in gs:
            if hv != 0:
                r = r * hv + _over(x**2, -1, np.mean)
            v = r if hv != 0 else x**2
            p = p - LR * x / np.sqrt(1 + v + r)
        return p

    for hv in (0.5, 0.0):
        want = [transcription(p, [gs[i] for gs in grads], hv) for i, p in enumerate(params0)]
        for path in ("numpy", "jax", "torch"):
            hypers = {"lr" if path == "torch" else "learning_rate": LR, "h": hv}
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # torch: "An output with one or more elements was resized"
                got = steps(mods, R, params0, grads, path, **hypers)
            assert_close(got, want, 1e-12, f"RowOrMatrix h={hv} ({path})")


def test_a_float16_parameter_is_reduced_in_float32():
    """||w||^2 of a float16 parameter of 300s: 1.08e6 overflows float16 (inf from 256 on), so the RMS of
    the parameter in Adafactor's step size is read in float32, as the gradient is; every backend agrees
    with torch.optim.Adafactor (one step, to float16's rounding), where each set the parameter to -inf."""
    import jax.numpy as jnp
    import torch

    from optforge.generated import jax as gen_jax
    from optforge.generated import numpy as gen_numpy
    from optforge.generated.torch import TorchAdafactor

    def torch_step(cls):
        p = torch.full((3, 4), 300.0, dtype=torch.float16, requires_grad=True)
        p.grad = torch.linspace(0.5, 2.0, 12, dtype=torch.float16).reshape(3, 4)
        cls([p], lr=0.01).step()
        return p.detach().numpy().astype(np.float64)

    want = torch_step(torch.optim.Adafactor)
    assert np.all(np.isfinite(want)) and np.all(want < 300)
    got = {"torch": torch_step(TorchAdafactor)}
    grad = np.linspace(0.5, 2.0, 12).reshape(3, 4).astype(np.float16)
    opt = gen_numpy.TorchAdafactor(learning_rate=0.01)
    params = [np.full((3, 4), 300.0, np.float16)]
    params, _ = opt.step(params, [grad], opt.init(params))
    got["numpy"] = params[0].astype(np.float64)
    tx = gen_jax.torch_adafactor(learning_rate=0.01)
    jparams = [jnp.full((3, 4), 300.0, jnp.float16)]
    updates, _ = tx.update([jnp.asarray(grad)], tx.init(jparams), jparams)
    got["jax"] = np.asarray(jparams[0] + updates[0], np.float64)
    for name, value in got.items():
        np.testing.assert_allclose(value, want, rtol=2e-3, err_msg=name)  # float16: a unit is 0.25 at 300


def test_a_row_in_a_statement_of_the_tensors_shape_is_computed_at_its_own_shape(tmp_path):
    """A denominator that is a row (it reads a state reduced over the last axis) in a value shaped like the
    tensor (a helper's rule): torch wrote the row's product into a scratch buffer of the tensor's shape,
    which it resized there and back every step (a deprecated behaviour: a UserWarning each time). No
    warning now, and NumPy, JAX and torch follow the transcription (float64, 1e-12)."""
    import warnings

    import rulekit

    from optforge.compiler.dsl import Rule, sqrt, t, tensor_mean, tensor_norm

    r = Rule("RowDenominator", module="row_denominator", title="Row-normalised momentum", summary="A test.")
    lr = r.learning_rate(0.1)
    m = r.state("m", 0, "momentum")
    v = r.state("v", 0, "row second moment")
    r.assign(v, 0.9 * v + 0.1 * tensor_mean(g**2, axis=-1), "row moment")
    r.assign(m, 0.9 * m + g, "momentum")
    u = r.let("u", m / ((1 - 0.9**t) * (sqrt(v / (1 - 0.999**t)) + 1e-8)), "step")
    r.assign(w, w - lr * u / (1 + tensor_norm(u)), "update")
    mods = rulekit.load(r, tmp_path)
    rng = np.random.default_rng(5)
    params0 = [rng.normal(size=s) for s in [(3, 4), (2, 3, 5), (6,)]]
    grads = [[rng.normal(size=p.shape) for p in params0] for _ in range(4)]
    want = []
    for p, gs in zip(params0, zip(*grads)):
        p, mm, vv = p.copy(), np.zeros_like(p), np.zeros(p.shape[:-1] + (1,))
        for k, x in enumerate(gs, start=1):
            vv = 0.9 * vv + 0.1 * np.mean(x**2, axis=-1, keepdims=True)
            mm = 0.9 * mm + x
            uu = mm / ((1 - 0.9**k) * (np.sqrt(vv / (1 - 0.999**k)) + 1e-8))
            p = p - 0.1 * uu / (1 + np.sqrt(np.sum(uu**2)))
        want.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in ("numpy", "jax", "torch"):
            rate = {"lr": 0.1} if path == "torch" else {"learning_rate": 0.1}
            got = rulekit.steps(mods, r, params0, grads, path, **rate)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=path)


def test_a_reduction_over_an_axis_of_an_expression_allocates_nothing_of_the_tensors_size(tmp_path):
    """``mean(g**2, axis=-1)`` read once (a helper's rule): its argument was printed inside the call, a new
    array the size of the parameter every step in NumPy and torch; it is a temporary computed into a
    scratch buffer now. A NumPy step of a 512 x 512 parameter allocates under 10% of it (it allocated
    100%), and torch's module computes the square into a scratch buffer too."""
    import tracemalloc

    import rulekit

    from optforge.compiler.dsl import Rule, sqrt, tensor_mean

    r = Rule("RowRms", module="row_rms", title="Row-RMS-normalised SGD", summary="A test.")
    lr = r.learning_rate(0.1)
    v = r.state("v", 0, "row second moment")
    r.assign(v, 0.9 * v + 0.1 * tensor_mean(g**2, axis=-1), "row moment")
    r.assign(w, w - lr * g / (sqrt(v) + 1e-8), "update")
    mods = rulekit.load(r, tmp_path)
    opt = mods["numpy"].RowRms()
    rng = np.random.default_rng(0)
    p = [rng.normal(size=(512, 512))]
    state = opt.init(p)
    for _ in range(2):
        p, state = opt.step(p, [rng.normal(size=(512, 512))], state)
    grad = [rng.normal(size=(512, 512))]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    p, state = opt.step(p, grad, state)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak < 0.1 * p[0].nbytes, f"a step allocated {peak / p[0].nbytes:.2f} of the parameter's bytes"
    torch_code = (tmp_path / "torch_row_rms.py").read_text()
    assert "axis_mean(g**2" not in torch_code and "out=_s0" in torch_code, torch_code
