"""Storage reuse never changes a program's meaning (issue 19, defect 1).

The in-place paths (NumPy, torch) update ``w`` and the state in place; a named value that is just another
name for one of those buffers (``old = m``) must still hold the *previous* value after the buffer is
written. Each rule here is checked in every backend (plain and fused) against a literal NumPy transcription
of its equations, written without the compiler; and the pass that decides which values are copied is
tested on its own, on hand-built IR.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close, problem
from rulekit import load

from optforge.compiler.dsl import Rule, g, t, tensor_sum, w, where
from optforge.compiler.ir import Assign, Copy, Scope, ssa
from optforge.compiler.passes.storage import copies_needed
from optforge.rules._keras_options import keras_options

LR = 0.05


def previous_state():
    """The issue's example: ``old`` is the previous m."""
    R = Rule("PrevState", title="t")
    lr = R.learning_rate(LR)
    m = R.state("m", 0, "m")
    old = R.let("old", m, "previous m")
    R.assign(m, old + g, "accumulate")
    R.assign(w, w - lr * (m - old), "step")

    def oracle(p, gs):
        p, m = p.copy(), np.zeros_like(p)
        for x in gs:
            old = m.copy()
            m = old + x
            p = p - LR * (m - old)
        return p

    return R, oracle


def previous_weights():
    """A copy of the weights before the update, read after it."""
    R = Rule("PrevWeights", title="t")
    lr = R.learning_rate(LR)
    d = R.state("d", 0, "last step")
    prev = R.let("prev", w, "weights before the step")
    R.assign(w, w - lr * (g + d / 2), "step")
    R.assign(d, prev - w, "what the step moved")

    def oracle(p, gs):
        p, d = p.copy(), np.zeros_like(p)
        for x in gs:
            prev = p.copy()
            p = p - LR * (x + d / 2)
            d = prev - p
        return p

    return R, oracle


def alias_chain_under_where():
    """An alias of an alias, chosen by a condition on the step (a Python branch in the in-place paths)."""
    R = Rule("AliasChain", title="t")
    lr = R.learning_rate(LR)
    m = R.state("m", 0, "m")
    a = R.let("a", m, "m")
    b = R.let("b", where(t > 1, a, 0), "m after the first step")
    R.assign(m, 0.5 * m + g, "accumulate")
    R.assign(w, w - lr * (m + b), "step")

    def oracle(p, gs):
        p, m = p.copy(), np.zeros_like(p)
        for k, x in enumerate(gs, start=1):
            b = m.copy() if k > 1 else 0.0
            m = 0.5 * m + x
            p = p - LR * (m + b)
        return p

    return R, oracle


def previous_per_tensor_state():
    """A per-tensor state (a 0-d buffer in the in-place paths) and its previous value."""
    R = Rule("PrevNorm", title="t")
    lr = R.learning_rate(LR)
    v = R.state("v", 0, "running squared norm", scope="tensor")
    old = R.let("old", v, "previous v")
    R.assign(v, 0.5 * v + tensor_sum(g**2), "running squared norm")
    R.assign(w, w - lr * g / (1 + v + old), "step")

    def oracle(p, gs):
        p, v = p.copy(), 0.0
        for x in gs:
            old = v
            v = 0.5 * v + np.sum(x**2)
            p = p - LR * x / (1 + v + old)
        return p

    return R, oracle


RULES = [previous_state, previous_weights, alias_chain_under_where, previous_per_tensor_state]
RUNS = [("numpy", False), ("numpy", True), ("torch", False), ("torch", True), ("jax", None)]


def _run(modules, rule, backend, fused, params, grads):
    if backend == "numpy":
        opt = getattr(modules["numpy"], rule.name)(learning_rate=LR, fused=fused)
        ps = [p.copy() for p in params]
        state = opt.init(ps)
        for gs in grads:
            ps, state = opt.step(ps, [x.copy() for x in gs], state)
        return ps
    if backend == "torch":
        import torch

        ps = [torch.tensor(p, requires_grad=True) for p in params]
        opt = getattr(modules["torch"], rule.name)(ps, lr=LR, fused=fused)
        for gs in grads:
            for p, x in zip(ps, gs):
                p.grad = torch.tensor(x)
            opt.step()
        return [p.detach().numpy() for p in ps]
    import jax
    import optax

    jax.config.update("jax_enable_x64", True)
    tx = getattr(modules["jax"], rule.module)(learning_rate=LR)
    ps = [jax.numpy.asarray(p) for p in params]
    state = tx.init(ps)
    for gs in grads:
        updates, state = jax.jit(tx.update)([jax.numpy.asarray(x) for x in gs], state, ps)
        ps = optax.apply_updates(ps, updates)
    return [np.asarray(p) for p in ps]


@pytest.fixture(scope="module", params=RULES, ids=lambda f: f.__name__)
def compiled(request, tmp_path_factory):
    rule, oracle = request.param()
    rule = keras_options(rule)
    return rule, oracle, load(rule, tmp_path_factory.mktemp(rule.module))


@pytest.mark.parametrize("backend, fused", RUNS, ids=[f"{b}{'-fused' if f else ''}" for b, f in RUNS])
def test_a_value_named_before_its_buffer_is_written_keeps_its_value(compiled, backend, fused):
    rule, oracle, modules = compiled
    params, grads = problem(30)
    want = [oracle(p, [gs[i] for gs in grads]) for i, p in enumerate(params)]
    got = _run(modules, rule, backend, fused, params, grads)
    assert_close(got, want, 1e-12, f"{rule.name} ({backend}{', fused' if fused else ''})")


# -- the pass on hand-built IR -------------------------------------------------------------------


def _let(name, expr, v=1):
    return Assign(name, v, expr, "let", Scope.ELEMENT)


def _state(name, v, expr):
    return Assign(name, v, expr, "state", Scope.ELEMENT)


M, G, OLD = sp.Symbol("m"), sp.Symbol("g"), ssa("old", 1)


def test_an_alias_read_after_its_buffer_is_written_is_copied():
    body = (_let("old", M), _state("m", 1, OLD + G), Assign("w", 1, sp.Symbol("w") - OLD, "param"))
    out = copies_needed(body, {"m", "w", "g"})
    assert out[0].expr == Copy(M)
    assert out[1:] == body[1:]


def test_an_alias_read_only_before_or_by_the_write_is_not_copied():
    body = (_let("old", M), Assign("w", 1, sp.Symbol("w") - OLD, "param"), _state("m", 1, OLD + G))
    assert copies_needed(body, {"m", "w", "g"}) == body


def test_only_the_branch_that_aliases_is_copied():
    chosen = sp.Piecewise((M, sp.Symbol("t") > 1), (G + 1, True))
    body = (_let("old", chosen), _state("m", 1, M + G), _let("x", OLD, 2))
    out = copies_needed(body, {"m", "w", "g"})
    assert out[0].expr == sp.Piecewise((Copy(M), sp.Symbol("t") > 1), (G + 1, True))


def test_an_alias_of_an_alias_is_copied_at_the_read_that_needs_it():
    b = ssa("b", 1)
    body = (_let("old", M), _let("b", OLD), _state("m", 1, M + G), _let("x", b, 2))
    out = copies_needed(body, {"m", "w", "g"})
    assert out[0] == body[0]  # old itself is not read after m is written
    assert out[1].expr == Copy(OLD)


def test_registered_rules_copy_nothing_they_do_not_need():
    """No registered rule names a buffer it later overwrites: the pass adds no copy (and no cost) there."""
    from cases import RULES, compiled

    for rule in RULES.values():
        program = compiled(rule)  # compiled once per test process
        copies = [a for c in program.cases for a in c.body if a.expr.has(Copy)]
        assert not copies, f"{rule.name}: {copies[0]}"
