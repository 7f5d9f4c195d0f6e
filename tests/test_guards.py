"""A once-per-step value that only a branch reads is computed only when that branch is taken
(``compiler/passes/guards.py``): RAdam's rectification, a root of a number that is negative until the
variance estimate is long enough, written as a ``let`` where the paper names it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rulekit
import sympy as sp

from optforge.compiler.dsl import Rule, g, log, sqrt, t, w, where
from optforge.compiler.ir import Role, SectionKind
from optforge.compiler.pipeline import compile_rule

STEPS = 6
# the fused path's prologue is the fused module's, the same for NumPy and torch: run once
PATHS = ["numpy", "numpy fused", "jax", "torch", "torch triton"]


def branch_rule() -> Rule:
    """``x`` exists from step 3 (a root), ``y`` from step 4 (a log of a value that is 0 at step 3), read
    only once ``t > 3``; ``z`` is read under a test of each element as well, which its step cannot make."""
    r = Rule("LetUnderBranch", module="let_under_branch", title="Lets under a branch", summary="A test.")
    lr = r.learning_rate(0.1)
    x = r.let("x", sqrt(t - 3), "a root that exists from t = 3")
    y = r.let("y", log(x), "a log that exists from t = 4")
    z = r.let("z", 1 / (t - 2), "infinite at t = 2")
    r.assign(w, where(t > 3, w - lr * (x + y) * g, w - lr * g), "the step")
    r.assign(w, where((t > 2) & (g > 0), w - lr * z * g, w), "a second step")
    return r


def transcription(params0: list, grads: list, lr: float = 0.1) -> list:
    """The rule above, step by step in Python (math), each value computed where it is read."""
    params = [p.copy() for p in params0]
    for step, gs in enumerate(grads, start=1):
        for i, gi in enumerate(gs):
            wi = params[i]
            if step > 3:
                x = math.sqrt(step - 3)
                wi = wi - lr * (x + math.log(x)) * gi
            else:
                wi = wi - lr * gi
            if step > 2:
                wi = np.where(gi > 0, wi - lr * (1 / (step - 2)) * gi, wi)
            params[i] = wi
    return params


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    rule = branch_rule()
    return rule, rulekit.load(rule, tmp_path_factory.mktemp("guards"))


def test_each_value_is_guarded_by_the_tests_its_reads_are_under():
    """``x`` and ``y`` are computed where ``t > 3``; ``z``'s reads are under ``t > 2`` and a test of each
    element: its step can test ``t > 2`` alone, and does."""
    program = compile_rule(branch_rule(), check_between_passes=True)
    assert "guard_lets" in program.passes
    (case,) = program.cases
    step = {a.target: a for s in case.sections if s.kind == SectionKind.STEP for a in s.body}
    tests = {}
    for name in ("x", "y", "z"):
        expr = step[name].expr
        assert step[name].role == Role.LET and isinstance(expr, sp.Piecewise), (name, expr)
        (value, test), (other, otherwise) = expr.args
        assert other == 0 and otherwise == sp.true
        tests[name] = test
    assert tests["x"] == tests["y"] == (sp.Symbol("t") > 3)
    assert tests["z"] == (sp.Symbol("t") > 2)


def test_a_value_read_without_a_test_is_left_as_it_is():
    r = Rule("LetRead", module="let_read", title="A let read", summary="A test.")
    lr = r.learning_rate(0.1)
    x = r.let("x", sqrt(t + 1), "read everywhere")
    r.assign(w, where(t > 3, w - lr * x * g, w - lr * x * x * g), "the step")
    (case,) = compile_rule(r).cases
    (x_assign,) = [a for s in case.sections for a in s.body if a.target == "x"]
    assert not isinstance(x_assign.expr, sp.Piecewise), x_assign.expr


@pytest.mark.parametrize("path", PATHS)
def test_a_value_is_computed_only_in_the_steps_that_read_it(loaded, path):
    """Every backend and kernel path, float64, against the transcription (1e-12): the root of a negative
    number, the log of 0 and the division by 0 are never computed (NumPy's and torch's ``math`` raised
    'math domain error' before this pass)."""
    rule, mods = loaded
    rng = np.random.default_rng(3)
    params0 = [rng.normal(size=s) for s in [(), (5,), (3, 4)]]
    grads = [[rng.normal(size=p.shape) for p in params0] for _ in range(STEPS)]
    rate = {"lr": 0.1} if path.startswith("torch") else {"learning_rate": 0.1}
    with np.errstate(all="raise"):
        got = rulekit.steps(mods, rule, params0, grads, path, **rate)
    for a, b in zip(got, transcription(params0, grads)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def warmup_rule() -> Rule:
    """A warm-up over an option's steps, read only under ``where(Given(T) & (t < T), ...)``: the guard of
    ``frac`` must keep the test that ``T`` was given (a helper's rule, AdEMAMix's warm-up: ``T > t`` of
    ``T = None`` raised TypeError in every backend)."""
    from optforge.compiler.dsl import Given

    r = Rule("OptionalWarmup", module="optional_warmup", title="An optional warm-up", summary="A test.")
    lr = r.learning_rate(0.1)
    T = r.option("T", "[1, inf)", "warm-up steps (None: none)", integer=True)
    frac = r.let("frac", where(Given(T), t / T, 1), "warm-up fraction")
    r.assign(w, w - lr * where(Given(T) & (t < T), frac, 1) * g, "update")
    return r


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("warmup", [None, 4])
def test_a_guard_keeps_the_test_that_an_option_is_given(tmp_path_factory, path, warmup):
    rule = warmup_rule()
    mods = rulekit.load(rule, tmp_path_factory.mktemp("warmup"))
    rng = np.random.default_rng(4)
    params0 = [rng.normal(size=s) for s in [(), (5,), (3, 4)]]
    grads = [[rng.normal(size=p.shape) for p in params0] for _ in range(STEPS)]
    rate = {"lr": 0.1} if path.startswith("torch") else {"learning_rate": 0.1}
    got = rulekit.steps(mods, rule, params0, grads, path, **rate, T=warmup)
    want = [p.copy() for p in params0]
    for step, gs in enumerate(grads, start=1):
        scale = step / warmup if warmup is not None and step < warmup else 1.0
        want = [p - 0.1 * scale * x for p, x in zip(want, gs)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
