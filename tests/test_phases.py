"""Reductions over all tensors that a rule writes itself, chained as deep as it likes (issue 19, defects 2-3).

A rule's reduction over all tensors may read the result of another (the gradient normalised by its global
norm, then a global sum over the normalised values): the compiler makes as many passes over the tensors
as the dependencies need, before the loop that updates them, and every backend runs them. Global state
may be assigned from such a reduction and read in the same step. Every rule here runs in every backend
(NumPy and torch, plain and fused; JAX under jit) against a literal NumPy transcription of its equations,
written without the compiler, also with Keras's ``global_clipnorm`` (a reduction over all tensors of its
own, first) and ``clipnorm``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close, problem
from rulekit import load

from optforge.compiler.dsl import (
    GlobalSum,
    Rule,
    g,
    global_max,
    global_norm,
    global_sum,
    maximum,
    t,
    w,
    where,
)
from optforge.compiler.ir import Assign, Scope, ssa
from optforge.compiler.passes.schedule import schedule_body
from optforge.compiler.pipeline import compile_rule
from optforge.rules._keras_options import keras_options

LR = 0.01
SCALES = [1.0, 0.1, 2.0, 1.0, 0.5, 1.0]  # gradients of similar sizes: these rules are not scale-free
STEPS = 8


def _sum(xs) -> float:
    return sum(float(np.sum(x)) for x in xs)


def global_dot():
    """(a) ``w <- w - lr*g*global_sum(g*w)``: the rule's own reduction reads the (clipped) gradient."""
    R = Rule("GlobalDot", title="t")
    lr = R.learning_rate(LR)
    R.assign(w, w - lr * g * global_sum(g * w), "step")

    def oracle(ws, gs):
        s = _sum(x * p for x, p in zip(gs, ws))
        return [p - LR * x * s for p, x in zip(ws, gs)]

    return R, oracle, 2


def chain():
    """(b) Three reductions over all tensors, each reading the one before: three passes, then the loop."""
    R = Rule("Chain", title="t")
    lr = R.learning_rate(LR)
    gn = R.let("gn", g / global_norm(g), "normalised gradient")
    c = R.let("c", global_sum(gn * w), "its global dot product with w")
    h = R.let("h", gn - c * w, "direction")
    R.assign(w, w - lr * h / global_norm(h), "step")

    def oracle(ws, gs):
        norm = math.sqrt(_sum(x * x for x in gs))
        gn = [x / norm for x in gs]
        c = _sum(x * p for x, p in zip(gn, ws))
        h = [x - c * p for x, p in zip(gn, ws)]
        hn = math.sqrt(_sum(x * x for x in h))
        return [p - LR * x / hn for p, x in zip(ws, h)]

    return R, oracle, 4


def global_state():
    """(c) A global state assigned from a reduction over all tensors; a per-element state reads its value
    from before the step, the update its new value."""
    R = Rule("GlobalState", title="t")
    lr = R.learning_rate(LR)
    d = R.state("d", 0, "running global dot product", scope="global")
    m = R.state("m", 0, "momentum")
    R.assign(m, 0.9 * m + g * (1 + d), "momentum, with the previous d")
    R.assign(d, 0.5 * d + global_sum(g * w), "global dot product")
    R.assign(w, w - lr * (m + g * d), "step, with the new d")

    def oracle(ws, gs, st):
        d = st.get("d", 0.0)
        ms = st.get("m", [np.zeros_like(p) for p in ws])
        ms = [0.9 * m + x * (1 + d) for m, x in zip(ms, gs)]
        d = 0.5 * d + _sum(x * p for x, p in zip(gs, ws))
        st.update(d=d, m=ms)
        return [p - LR * (m + x * d) for p, m, x in zip(ws, ms, gs)]

    return R, oracle, 2


def global_ema():
    """(d) Global EMA-like scalars updated and read in the same step, one through maximum()."""
    R = Rule("GlobalEma", title="t")
    lr = R.learning_rate(LR)
    e = R.state("e", 0, "EMA of the global norm", scope="global")
    peak = R.state("peak", 0, "decaying peak of |g|", scope="global")
    R.assign(e, 0.9 * e + 0.1 * global_norm(g), "EMA of the global norm")
    R.assign(peak, maximum(0.99 * peak, global_max(abs(g))), "decaying peak")
    R.assign(w, w - lr * g * e / (1 + peak), "step")

    def oracle(ws, gs, st):
        e = 0.9 * st.get("e", 0.0) + 0.1 * math.sqrt(_sum(x * x for x in gs))
        peak = max(0.99 * st.get("peak", 0.0), max(float(np.max(np.abs(x))) for x in gs))
        st.update(e=e, peak=peak)
        return [p - LR * x * e / (1 + peak) for p, x in zip(ws, gs)]

    return R, oracle, 2


def anchor():
    """(e) ``x0 <- where(t > 1, x0, w)``: an element state that keeps the weights of the first step."""
    R = Rule("Anchor", title="t")
    lr = R.learning_rate(LR)
    x0 = R.state("x0", 0, "the weights at the first step")
    R.assign(x0, where(t > 1, x0, w), "anchor")
    R.assign(w, w - lr * (g + 0.1 * (w - x0)), "step")

    def oracle(ws, gs, st):
        if "x0" not in st:
            st["x0"] = [p.copy() for p in ws]
        return [p - LR * (x + 0.1 * (p - a)) for p, x, a in zip(ws, gs, st["x0"])]

    return R, oracle, None


RULES = [global_dot, chain, global_state, global_ema, anchor]
OPTIONS = [{}, {"global_clipnorm": 0.7, "use_ema": True, "ema_overwrite_frequency": 3}, {"clipnorm": 0.3}]
RUNS = [("numpy", False), ("numpy", True), ("torch", False), ("torch", True), ("jax", None)]


def clipped(gs, options):
    """Keras's clipping, transcribed: per tensor to ``clipnorm``, or all together to ``global_clipnorm``."""
    if "clipnorm" in options:
        c = options["clipnorm"]
        return [x * c / max(math.sqrt(float(np.sum(x * x))), c) for x in gs]
    if "global_clipnorm" in options:
        c = options["global_clipnorm"]
        return [x * c / max(math.sqrt(_sum(x * x for x in gs)), c) for x in gs]
    return list(gs)


def transcription(oracle, params, grads, options):
    ws, st = [p.copy() for p in params], {}
    for step, gs in enumerate(grads, start=1):
        gs = clipped(gs, options)
        ws = oracle(ws, gs, st) if oracle.__code__.co_argcount == 3 else oracle(ws, gs)
        if options.get("use_ema"):  # Keras's EMA of the weights, 0 momentum at the first step
            mu = 0.0 if step == 1 else 0.99
            ema = st.get("ema", [np.zeros_like(p) for p in ws])
            st["ema"] = ema = [mu * e + (1 - mu) * p for e, p in zip(ema, ws)]
            if step % options["ema_overwrite_frequency"] == 0:
                ws = [e.copy() for e in ema]
    return ws


def _run(modules, rule, backend, fused, params, grads, options):
    if backend == "numpy":
        opt = getattr(modules["numpy"], rule.name)(learning_rate=LR, fused=fused, **options)
        ps = [p.copy() for p in params]
        state = opt.init(ps)
        for gs in grads:
            ps, state = opt.step(ps, [x.copy() for x in gs], state)
        return ps
    if backend == "torch":
        import torch

        ps = [torch.tensor(p, requires_grad=True) for p in params]
        opt = getattr(modules["torch"], rule.name)(ps, lr=LR, fused=fused, **options)
        for gs in grads:
            for p, x in zip(ps, gs):
                p.grad = torch.tensor(x)
            opt.step()
        return [p.detach().numpy() for p in ps]
    import jax
    import optax

    jax.config.update("jax_enable_x64", True)
    tx = getattr(modules["jax"], rule.module)(learning_rate=LR, **options)
    ps = [jax.numpy.asarray(p) for p in params]
    state = tx.init(ps)
    update = jax.jit(tx.update)
    for gs in grads:
        updates, state = update([jax.numpy.asarray(x) for x in gs], state, ps)
        ps = optax.apply_updates(ps, updates)
    return [np.asarray(p) for p in ps]


def _runs() -> list:
    """Every backend with every option set; of the fused runs (a Numba compile of seconds each), NumPy's
    with global_clipnorm (the most passes, EMA and overwrite too): torch's fused path calls the same
    kernels, and the kernels without options and with clipnorm are tested in tests/test_fused.py."""
    out = []
    for backend, fused in RUNS:
        for options in OPTIONS:
            if fused and (backend == "torch" or "global_clipnorm" not in options):
                continue
            name = f"{backend}{'-fused' if fused else ''}-{next(iter(options), 'plain')}"
            out.append(pytest.param(backend, fused, options, id=name))
    return out


@pytest.fixture(scope="module", params=RULES, ids=lambda f: f.__name__)
def compiled(request, tmp_path_factory):
    rule, oracle, passes = request.param()
    rule = keras_options(rule)
    return rule, oracle, passes, load(rule, tmp_path_factory.mktemp(rule.module))


@pytest.mark.parametrize("backend, fused, options", _runs())
def test_rules_with_their_own_reductions_over_all_tensors(compiled, backend, fused, options):
    rule, oracle, _, modules = compiled
    params, grads = problem(STEPS, scales=SCALES)
    want = transcription(oracle, params, grads, options)
    got = _run(modules, rule, backend, fused, params, grads, options)
    assert_close(got, want, 1e-12, f"{rule.name} {options} ({backend}{', fused' if fused else ''})")


@pytest.mark.parametrize("make", RULES, ids=lambda f: f.__name__)
def test_the_compiler_counts_the_passes_over_all_tensors(make):
    """As many passes as the longest chain of reductions over all tensors, Keras's global_clipnorm
    first: GlobalDot's sum reads the clipped gradient (2 passes), Chain's three reductions read each
    other (4)."""
    rule, _, passes = make()
    program = compile_rule(keras_options(rule))
    most = max(sum(s.kind == "reduce" for s in c.sections) for c in program.cases)
    assert most == (passes or 1), [[s.kind for s in c.sections] for c in program.cases]


def test_show_prints_the_passes_over_all_tensors():
    from optforge.compiler.show import show

    rule, _, _ = chain()
    text = show(compile_rule(keras_options(rule)))
    assert "passes over all tensors before the loop that updates them: 4" in text


# -- the pass on hand-built IR -------------------------------------------------------------------

G, W, D = sp.Symbol("g"), sp.Symbol("w"), sp.Symbol("d")


def _kinds(sections):
    return [(s.kind, [str(a.lhs) for a in s.body]) for s in sections]


def test_a_chain_of_reductions_takes_one_pass_each_with_what_it_reads_replayed():
    s1, s2, x = sp.Symbol("s1"), sp.Symbol("s2"), ssa("x", 1)
    body = (
        Assign("s1", 0, GlobalSum(G**2), "reduce", Scope.GLOBAL),
        Assign("x", 1, G / sp.sqrt(s1), "let", Scope.ELEMENT),
        Assign("s2", 0, GlobalSum(x * W), "reduce", Scope.GLOBAL),
        Assign("w", 1, W - x * s2, "param", Scope.ELEMENT),
    )
    new, sections = schedule_body(body)
    assert new == body
    assert _kinds(sections) == [
        ("reduce", ["s1"]),
        ("reduce", ["x.1", "s2"]),  # x replayed: computed, not kept
        ("tensor", ["x.1", "w.1"]),
    ]
    assert sections[1].body[0].role == "replay"


def test_a_global_read_before_and_after_its_update_keeps_its_previous_value():
    """The loop reads d from before the step (m) and after it (w): d's previous value gets a name."""
    s, d1 = sp.Symbol("s"), ssa("d", 1)
    body = (
        Assign("m", 1, sp.Symbol("m") + G * D, "state", Scope.ELEMENT),
        Assign("s", 0, GlobalSum(G * W), "reduce", Scope.GLOBAL),
        Assign("d", 1, D / 2 + s, "state", Scope.GLOBAL),
        Assign("w", 1, W - d1 * ssa("m", 1), "param", Scope.ELEMENT),
    )
    new, sections = schedule_body(body)
    prev = ssa("d_prev", 1)
    assert new[0] == Assign("d_prev", 1, D, "let", Scope.GLOBAL)
    assert new[1].expr == sp.Symbol("m") + G * prev
    assert _kinds(sections) == [
        ("step", ["d_prev.1"]),
        ("reduce", ["s"]),
        ("step", ["d.1"]),
        ("tensor", ["m.1", "w.1"]),
    ]


def test_a_global_updated_where_nothing_later_reads_its_previous_value_is_not_copied():
    s = sp.Symbol("s")
    body = (
        Assign("s", 0, GlobalSum(G * W), "reduce", Scope.GLOBAL),
        Assign("d", 1, D / 2 + s, "state", Scope.GLOBAL),
        Assign("w", 1, W - ssa("d", 1) * G, "param", Scope.ELEMENT),
    )
    new, sections = schedule_body(body)
    assert new == body
    assert _kinds(sections) == [("reduce", ["s"]), ("step", ["d.1"]), ("tensor", ["w.1"])]


def test_a_pass_that_reads_a_global_from_before_its_update_reads_a_copy():
    """``s`` sums over ``d`` from before the step, but ``d.1`` (which needs no pass) is known before it."""
    s = sp.Symbol("s")
    body = (
        Assign("s", 0, GlobalSum(G * D), "reduce", Scope.GLOBAL),
        Assign("d", 1, D + 1, "state", Scope.GLOBAL),
        Assign("w", 1, W - (ssa("d", 1) + s) * G, "param", Scope.ELEMENT),
    )
    new, sections = schedule_body(body)
    assert new[1].expr == GlobalSum(G * ssa("d_prev", 1))
    assert _kinds(sections) == [("step", ["d_prev.1", "d.1"]), ("reduce", ["s"]), ("tensor", ["w.1"])]
