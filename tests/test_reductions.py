"""Reductions over one tensor and over all tensors, nested with element-wise expressions both ways."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close, problem
from rulekit import load, steps

from optforge.compiler.dsl import (
    Rule,
    g,
    global_max,
    global_norm,
    global_sumsq,
    minimum,
    size,
    sqrt,
    tensor_max,
    tensor_mean,
    tensor_norm,
    tensor_sum,
    w,
    where,
)
from optforge.compiler.errors import RuleError
from optforge.compiler.pipeline import compile_rule


def reductions_rule():
    r = Rule("Reduce", title="every kind of reduction")
    lr = r.learning_rate(0.01)
    c = r.hyper("c", 1.0, "(0, inf)", "clip norm")
    s = r.hyper("s", 2.0, "(0, inf)", "scale")
    v = r.state("v", 0, "per-tensor EMA of a norm of an expression of g and w", scope="tensor")
    gs = r.let("gs", g / s, "scaled gradient")
    big = r.let("big", global_norm(gs), "global norm of the scaled gradient")
    peak = r.let("peak", global_max(abs(g)), "largest gradient entry")
    r.assign(v, 0.5 * v + 0.5 * tensor_norm(g + 0.1 * w), "per-tensor norm of an expression of g and w")
    d = r.let("d", gs * minimum(1, c / big) + g / peak * tensor_max(abs(g)) / (1 + tensor_sum(g * w) ** 2))
    r.assign(w, w - lr * d / sqrt(v + 1) - lr * 0.01 * global_sumsq(g) * w, "update")
    return r


def transcription(params0, grads, lr=0.01, c=1.0, s=2.0):
    w = [p.copy() for p in params0]
    v = [0.0 for _ in params0]
    for gs_ in grads:
        scaled = [x / s for x in gs_]
        big = math.sqrt(sum(float(np.sum(x * x)) for x in scaled))
        peak = max(float(np.max(np.abs(x))) for x in gs_)
        gsq = sum(float(np.sum(x * x)) for x in gs_)
        for i, x in enumerate(gs_):
            v[i] = 0.5 * v[i] + 0.5 * math.sqrt(float(np.sum((x + 0.1 * w[i]) ** 2)))
            d = scaled[i] * min(1.0, c / big) + x / peak * float(np.max(np.abs(x))) / (
                1 + float(np.sum(x * w[i])) ** 2
            )
            w[i] = w[i] - lr * d / math.sqrt(v[i] + 1) - lr * 0.01 * gsq * w[i]
    return w


def test_reductions_in_every_backend(tmp_path):
    rule = reductions_rule()
    mods = load(rule, tmp_path)
    params0, grads = problem(30, zero_first=False)
    want = transcription(params0, grads)
    for path in ("numpy", "jax", "torch"):
        assert_close(steps(mods, rule, params0, grads, path), want, 1e-12, path)


def size_rule():
    r = Rule("RmsStep", title="a momentum of the gradient over its root mean square, per tensor")
    lr = r.learning_rate(0.1)
    eps = r.hyper("eps", 1e-8, "[0, inf)", "added to the quotient")
    m = r.state("m", 0, "momentum")
    rms = r.let("rms", sqrt(tensor_mean(g**2)), "root mean square of the tensor's gradient")
    r.assign(m, 0.9 * m + g / rms + eps, "momentum")
    r.assign(w, w - lr * m * size / (size + 1), "update, shrunk for small tensors")
    return r


def test_size_and_tensor_mean_in_every_backend_and_kernel(tmp_path, fused_tensors):
    """``size`` (the tensor's element count) and ``tensor_mean``: NumPy, JAX, torch, the fused kernels
    (NumPy and torch; a tensor of 20,000 elements, which the threads would share were it not for the
    per-tensor value) and Triton's (interpreted), each against the transcription in float64; ranks 0 to 3."""
    rule = size_rule()
    mods = load(rule, tmp_path)
    shapes = [(), (7,), (5, 3), (2, 3, 4), (20_000,)]
    params0, grads = problem(6, shapes=shapes, scales=[1.0, 1e-3, 1e2, 1.0, 10.0], zero_first=False)

    def transcription(count):
        w_, m_ = [p.copy() for p in params0], [np.zeros_like(p) for p in params0]
        for gs_ in grads[:count]:
            for i, x in enumerate(gs_):
                n = x.size
                m_[i] = 0.9 * m_[i] + x / math.sqrt(float(np.sum(x**2)) / n) + 1e-8
                w_[i] = w_[i] - 0.1 * m_[i] * n / (n + 1)
        return w_

    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused"):
        assert_close(steps(mods, rule, params0, grads, path), transcription(len(grads)), 1e-12, path)
    assert_close(steps(mods, rule, params0, grads[:2], "torch triton"), transcription(2), 1e-12, "triton")
    assert fused_tensors[0] == 2 * len(grads) * len(shapes), "torch's fused path did not take every tensor"


def test_each_reduction_is_computed_once_and_global_ones_in_one_pass():
    program = compile_rule(reductions_rule())
    (case,) = program.cases
    kinds = [s.kind for s in case.sections]
    assert kinds.count("reduce") == 1, kinds  # the three global reductions share one pass
    reduce = next(s for s in case.sections if s.kind == "reduce")
    assert len([a for a in reduce.body if a.role == "reduce"]) == 3
    reductions = [a for a in case.body if a.role == "reduce"]
    assert len({sp.srepr(a.expr) for a in reductions}) == len(reductions) == 6  # 3 global, 3 per tensor


def test_show_lists_the_reductions():
    from optforge.compiler.show import show

    text = show(compile_rule(reductions_rule()))
    assert "sum_tensors ||g/s||^2" in text or "sum_tensors ||g||^2" in text
    assert "||g||^2" in text or "max_elements(|g|)" in text


def test_reduction_of_a_reduction_is_an_error():
    r = Rule("Bad", title="x")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * g * tensor_sum(g * tensor_sum(g)))
    with pytest.raises(RuleError, match="a reduction of a reduction"):
        compile_rule(r)


def test_global_reduction_of_a_value_updated_earlier_in_the_step(tmp_path):
    """The pass over all tensors recomputes the updated momentum (writing nothing), then the loop updates."""
    import torch

    r = Rule("Normalised", title="momentum normalised by its global norm")
    lr = r.learning_rate(0.1)
    m = r.state("m", 0, "momentum")
    r.assign(m, 0.9 * m + g)
    r.assign(w, w - lr * m / global_norm(m))
    mods = load(r, tmp_path)
    params0, grads = problem(10, zero_first=False)
    want = [p.copy() for p in params0]
    mm = [np.zeros_like(p) for p in params0]
    for gs_ in grads:
        mm = [0.9 * a + b for a, b in zip(mm, gs_)]
        norm = math.sqrt(sum(float(np.sum(a * a)) for a in mm))
        want = [p - 0.1 * a / norm for p, a in zip(want, mm)]
    opt = mods["numpy"].Normalised()
    p = [x.copy() for x in params0]
    st = opt.init(p)
    for gs_ in grads:
        p, st = opt.step(p, gs_, st)
    assert_close(p, want, 1e-12, "numpy")
    tp = [torch.tensor(x, requires_grad=True) for x in params0]
    topt = mods["torch"].Normalised(tp)
    for gs_ in grads:
        for q, x in zip(tp, gs_):
            q.grad = torch.tensor(x)
        topt.step()
    assert_close([q.detach().numpy() for q in tp], want, 1e-12, "torch")


def test_novograd_reduction_is_named_and_shown():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "optforge.cli", "show", "NovoGrad"], capture_output=True, text=True, check=True
    )
    reductions = out.stdout.split("reductions:")[1].split("\n\n")[0]
    assert "||g||^2" in reductions


def test_size_is_read_from_the_shape_shown_and_printed_as_mathematics():
    """``size`` is one per-tensor value, named ``size``; it needs no communication on sharded parameters
    (the mean's sum does) and reads as mathematics on the rule's page."""
    from optforge.compiler.show import show
    from optforge.compiler.traffic import communication
    from optforge.documentation.latex import equations_latex

    r = size_rule()
    program = compile_rule(r)
    reduced = [a.target for c in program.cases for a in c.body if a.role.name == "REDUCE"]
    assert sorted(reduced) == ["size", "sumsq_g"], reduced
    assert communication(program, {})["per_tensor"] == ["||g||^2"]
    assert "  size\n" in show(program)
    rms, _, update = equations_latex(list(r.equations), list(r.hypers.values()), list(r.states.values()), {})
    assert r"\operatorname{size}(w)" in rms and r"\operatorname{size}(w) + 1" in update, (rms, update)


@pytest.mark.parametrize("divided", [False, True], ids=["gated", "gated_and_divided"])
def test_a_reduction_in_a_where_test_runs_in_every_backend_and_kernel(tmp_path, divided):
    """``where(||g||^2 > 1, ..., ...)``: a reduction read in a select's test (the build failed: KeyError),
    and also in its branch (the fused module's split test read the per-tensor norm once per step: a
    module ruff could not parse); every backend and kernel equals the transcription in float64."""
    r = Rule("GatedNorm", title="a step gated by the gradient's norm")
    lr = r.learning_rate(0.1)
    s = tensor_sum(g**2)
    r.assign(w, w - lr * where(s > 1, g / sqrt(s) if divided else g, g if divided else 0 * g), "update")
    mods = load(r, tmp_path)
    rng = np.random.default_rng(0)
    params0 = [rng.standard_normal(5), 0.1 * rng.standard_normal((2, 3))]
    grads = [[rng.standard_normal(5), 0.1 * rng.standard_normal((2, 3))] for _ in range(3)]
    want = [p.copy() for p in params0]
    for gs in grads:
        for i, x in enumerate(gs):
            big = float(np.sum(x**2)) > 1  # the first tensor's norm is above 1, the second's below
            u = (x / math.sqrt(float(np.sum(x**2))) if divided else x) if big else (x if divided else 0 * x)
            want[i] = want[i] - 0.1 * u
    # the kernels where the norm is also in a branch (their split test); Numba compiles seconds each
    paths = ("numpy", "numpy fused", "jax", "torch", "torch fused") if divided else ("numpy", "jax", "torch")
    for path in paths:
        assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)


def test_a_maximum_over_an_empty_tensor_is_minus_infinity(tmp_path):
    """``tensor_max`` and ``global_max`` with an empty tensor among the parameters (a helper's rule: NumPy,
    JAX and torch raised on the empty one): the maximum's identity, -inf, as over an empty axis; the other
    tensors step as the transcription says, in every backend and kernel path (float64, 1e-12)."""
    from optforge.compiler.dsl import global_max, tensor_max

    r = Rule("MaxScaled", title="a step over one plus the largest gradient, per tensor and over all")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * g / (1 + tensor_max(abs(g))) / (1 + global_max(abs(g))), "update")
    mods = load(r, tmp_path)
    shapes = [(), (7,), (0,), (5, 3), (2, 0, 3)]
    params0, grads = problem(4, shapes=shapes, scales=[1.0, 1e-3, 1.0, 1e2, 1.0], zero_first=False)
    want = [p.copy() for p in params0]
    for gs_ in grads:
        peak = max(float(np.max(np.abs(x))) for x in gs_ if x.size)
        want = [
            p - 0.1 * x / (1 + (np.max(np.abs(x)) if x.size else -np.inf)) / (1 + peak)
            for p, x in zip(want, gs_)
        ]
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused", "torch triton"):
        assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)


def test_the_mean_of_a_tensor_with_no_element_is_zero(tmp_path):
    """``tensor_mean`` of an empty tensor is 0, as a mean over an empty axis (it was 0/0: a NaN stored in a
    per-tensor state, in every backend); the other tensors step as the transcription says."""
    import jax.numpy as jnp
    import torch

    r = Rule("MeanState", title="a per-tensor mean kept")
    lr = r.learning_rate(0.1)
    v = r.state("v", 0, "mean of g^2", scope="tensor")
    r.assign(v, 0.5 * v + tensor_mean(g**2), "mean")
    r.assign(w, w - lr * g / sqrt(1 + v), "update")
    mods = load(r, tmp_path)
    shapes = [(0,), (3, 2), (2, 0)]
    params0, grads = problem(3, shapes=shapes, zero_first=False)
    opt = mods["numpy"].MeanState()
    params = [p.copy() for p in params0]
    state = opt.init(params)
    for gs_ in grads:
        params, state = opt.step(params, gs_, state)
    tx = mods["jax"].mean_state()
    jstate = tx.init([jnp.asarray(p) for p in params0])
    for gs_ in grads:
        _, jstate = tx.update([jnp.asarray(x) for x in gs_], jstate, [jnp.asarray(p) for p in params0])
    tparams = [torch.tensor(p, requires_grad=True) for p in params0]
    topt = mods["torch"].MeanState(tparams)
    for gs_ in grads:
        for p, x in zip(tparams, gs_):
            p.grad = torch.tensor(x)
        topt.step()
    for i in (0, 2):  # the empty ones
        got = [float(state.v[i]), float(jstate.v[i]), float(topt.state[tparams[i]]["v"])]
        assert got == [0.0, 0.0, 0.0], f"tensor {i} {shapes[i]}: v = {got}"
    transcribed = [p.copy() for p in params0]
    vs = [0.0] * len(shapes)
    for gs_ in grads:
        for i, x in enumerate(gs_):
            vs[i] = 0.5 * vs[i] + (float(np.sum(x**2)) / x.size if x.size else 0.0)
            transcribed[i] = transcribed[i] - 0.1 * x / math.sqrt(1 + vs[i])
    for path in ("numpy", "jax", "torch", "numpy fused", "torch fused"):
        assert_close(steps(mods, r, params0, grads, path), transcribed, 1e-12, path)


def test_the_shape_is_read_after_a_first_step_of_the_parameter(tmp_path):
    """A decoupled weight decay, then a step that reads the tensor's size, rank, dtype's epsilon and a mean
    (Cautious AdamW's order: a helper's rule): the increment form (JAX's) read ``size`` of ``w + update``
    before the update was defined, an internal error at compile time. Every backend equals a NumPy
    transcription (float64, 1e-12)."""
    from optforge.compiler.dsl import machine_epsilon, rank

    r = Rule("DecayThenShape", title="decay, then a step scaled by the shape")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * 0.01 * w, "decoupled decay")
    r.assign(
        w, w - lr * g * (1 + tensor_mean(g) ** 2) / size * (rank + 1) * (1 + machine_epsilon * 1e14), "step"
    )
    mods = load(r, tmp_path)
    shapes = [(), (7,), (5, 3)]
    params0, grads = problem(4, shapes=shapes, zero_first=False)
    want = [p.copy() for p in params0]
    for gs_ in grads:
        for i, x in enumerate(gs_):
            decayed = want[i] - 0.1 * 0.01 * want[i]
            scale = (1 + np.mean(x) ** 2) / x.size * (x.ndim + 1) * (1 + np.finfo(np.float64).eps * 1e14)
            want[i] = decayed - 0.1 * x * scale
    for path in ("numpy", "jax", "torch"):  # no kernels: the rank is not lowered into them
        assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)
