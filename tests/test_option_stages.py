"""Keras's options as stages (runtime/options_*.py) around the rule's own code: the rule runs on update
calls only, and its step counts updates. The options' results are judged against Keras in
tests/test_keras_options.py; here, what the structure promises."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
from cases import RULES
from drivers import loss_kwargs, problem

N = 3  # gradient_accumulation_steps
LR = 0.01  # some rules have no default learning rate
CALLS = 7  # two updates (calls 3 and 6), and one call after them


def _counting(opt, seen: list) -> None:
    """Records the rule's ``n`` (updates before this one) each time the rule's code runs."""
    update = opt._update

    def counted(*args):
        call = next(a for a in args if hasattr(a, "is_update"))  # numpy: (call, state); torch: (group, call)
        seen.append(call.n)
        return update(*args)

    opt._update = counted


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_the_rule_runs_on_update_calls_only(rule, backend):
    params0, grads = problem(CALLS)
    seen: list = []
    if backend == "numpy":
        import optforge.generated.numpy as gen

        opt = getattr(gen, rule.name)(learning_rate=LR, gradient_accumulation_steps=N)
        _counting(opt, seen)
        params = [p.copy() for p in params0]
        state = opt.init(params)
        for k, g in enumerate(grads):
            params, state = opt.step(params, [x.copy() for x in g], state, **loss_kwargs(rule, k))
        assert state.step == CALLS
    else:
        import torch

        import optforge.generated.torch as gen

        params = [torch.tensor(p, requires_grad=True) for p in params0]
        opt = getattr(gen, rule.name)(params, lr=LR, gradient_accumulation_steps=N)
        _counting(opt, seen)
        for k, g in enumerate(grads):
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step(**loss_kwargs(rule, k))
        assert opt.param_groups[0]["step"] == CALLS
    assert seen == [0, 1], f"{rule.name} ({backend}): the rule ran with n = {seen}, expected [0, 1]"


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_a_call_that_only_accumulates_leaves_parameters_and_rule_state_alone(rule):
    """The first N - 1 calls change nothing but the accumulator (and the EMA, which follows w)."""
    import optforge.generated.numpy as gen

    params0, grads = problem(N - 1)
    opt = getattr(gen, rule.name)(learning_rate=LR, gradient_accumulation_steps=N, use_ema=True)
    params = [p.copy() for p in params0]
    state = opt.init(params)
    state0 = copy.deepcopy(state)  # the arrays are updated in place
    for k, g in enumerate(grads):
        params, state = opt.step(params, [x.copy() for x in g], state, **loss_kwargs(rule, k))
    for a, b in zip(params, params0):
        assert np.array_equal(a, b)
    want = [sum(g[i] for g in grads) for i in range(len(params0))]
    for a, b in zip(state.grad_accumulator, want):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    for name in state._fields:
        if name in ("step", "grad_accumulator", "ema"):
            continue
        before, after = getattr(state0, name), getattr(state, name)
        if isinstance(before, list):
            assert all(np.array_equal(x, y) for x, y in zip(before, after)), f"{rule.name}: {name} changed"
        else:
            assert before == after, f"{rule.name}: {name} changed"


def _top_level(rule) -> list[str]:
    """The operations of a JAX update with gradient accumulation, outside any ``cond`` branch."""
    import jax
    import jax.numpy as jnp

    import optforge.generated.jax as gen

    params0, grads = problem(1)
    tx = getattr(gen, rule.module)(learning_rate=LR, gradient_accumulation_steps=N, use_ema=True)
    params = [jnp.asarray(p) for p in params0]
    update = functools.partial(tx.update, **loss_kwargs(rule, 0))
    jaxpr = jax.make_jaxpr(update)([jnp.asarray(g) for g in grads[0]], tx.init(params), params)
    return sorted(str(e.primitive) for e in jaxpr.jaxpr.eqns)


def test_jax_computes_the_rule_only_in_the_branch_of_update_calls():
    """One ``lax.cond`` around the rule: outside it, every rule's update does the same operations (the
    options' stages), none of the rule's."""
    tops = {rule.name: _top_level(rule) for rule in RULES.values()}
    first, ops = next(iter(tops.items()))
    assert ops.count("cond") == 1, ops
    for name, other in tops.items():
        assert other == ops, (
            f"{name} computes {sorted(set(other) ^ set(ops))} outside the cond ({first} does not)"
        )


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_the_runtime_checks_each_option_as_the_rule_transform_declares_it(rule):
    """Every framework checks Keras's options with ``runtime/options.py``'s table; each option the rule
    takes (its own ``weight_decay`` aside) is declared the same in the rule transform, which the
    documentation and the kernels read; and the options' exclusive groups too."""
    from cases import compiled

    from optforge.backends.base import check_spec
    from optforge.runtime import common, options

    program = compiled(rule)
    own = {h.name for h in (program.inner or program).hypers}
    taken = [h for h in program.hypers if h.name not in own]
    assert {h.name for h in taken} <= set(options.CHECKS), "an option the runtime does not check"
    for h in taken:
        assert eval(check_spec(h), {"common": common}) == options.CHECKS[h.name], h.name  # noqa: S307
    for group in program.exclusives:
        if set(group) <= {h.name for h in taken}:
            assert tuple(group) in options.EXCLUSIVE, group


def test_a_rules_own_step_counts_updates_under_gradient_accumulation(tmp_path):
    """A rule that defines its step itself (``define_step``: ``t`` advances every ``k`` updates) with Keras's
    options (a helper's rule: a RuleError said to use define_step, which it did): its step is read of the
    updates, as the options' own is. ``k = 2`` with an update every 2 calls: 8 calls are 4 updates with
    ``t = 1, 1, 2, 2``, so ``w = -(1 + 1 + 1/2 + 1/2) = -3`` in NumPy, JAX and torch, and in the kernels
    (Numba's and Triton's), which took the stages' ``t`` (updates + 1) and gave -2.0833 (a review found it)."""
    import rulekit

    from optforge.compiler.dsl import Given, Rule, g, idiv, n, t, w, where
    from optforge.rules._keras_options import keras_options

    r = Rule("SlowClock", module="slow_clock", title="t advances every k updates", summary="A test.")
    lr = r.learning_rate(1.0)
    k = r.option("k", "[1, inf)", "updates per step", integer=True)
    r.define_step(where(Given(k), idiv(n, k), n) + 1, "t counts groups of k updates")
    r.assign(w, w - lr * g / t, "update")
    rule = keras_options(r)
    mods = rulekit.load(rule, tmp_path)
    params0 = [np.zeros(2)]
    grads = [[np.ones(2)] for _ in range(8)]
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused", "torch triton"):
        rate = {"lr": 1.0} if path.startswith("torch") else {"learning_rate": 1.0}
        got = rulekit.steps(mods, rule, params0, grads, path, **rate, k=2, gradient_accumulation_steps=2)
        np.testing.assert_allclose(got[0], [-3.0, -3.0], rtol=1e-15, err_msg=path)
        # the rule's step without accumulation, every call an update: t = 1, 1, 2, 2
        got = rulekit.steps(mods, rule, params0, grads[:4], path, **rate, k=2)
        np.testing.assert_allclose(got[0], [-3.0, -3.0], rtol=1e-15, err_msg=f"{path}, no accumulation")
