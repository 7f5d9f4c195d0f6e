"""What a JAX / optax user expects of the generated ``optax.GradientTransformation``s.

Every generic test is parametrized over the whole rule registry, so a new rule
is covered without editing this file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from cases import MACHINERY, compiled  # noqa: E402
from cases import RULES as ALL  # noqa: E402
from drivers import loss_kwargs  # noqa: E402
from hyper_cases import (  # noqa: E402
    BAD_RANGE,
    BOOL,
    CLIPPING_PAIRS,
    CLIPPING_VALUES,
    GOOD_ENDS,
    OPTIONS,
    RULE_CONFIGS,
    WRONG_TYPE,
    ZERO_IS_OFF,
    clipping_message,
    clipping_unseen,
    expected_range_message,
    inside,
    other_hypers,
    required,
    state_scopes,
    state_shape,
)

import optforge.generated.jax as generated  # noqa: E402

# the runs (jit, scan, schedules, inject_hyperparams) on the rules that show every feature (tests/cases.py);
# the signatures' checks (hyper_cases) on every rule
RULES = MACHINERY
ALL_RULES = list(ALL.values())
RULE_IDS = [r.name for r in RULES]
#: each named configuration of those rules (a configuration turns on a rule's flags: each case runs)
CONFIGS = [(r, c) for r, c in RULE_CONFIGS if r.name in {m.name for m in MACHINERY}]
CONFIG_IDS = [f"{r.name}-{c}" for r, c in CONFIGS]

# --------------------------------------------------------------------------------------
# helpers


def transform(rule, **kwargs) -> optax.GradientTransformation:
    """The rule's transformation; a required learning rate (default None, as in optax) is filled in."""
    return getattr(generated, rule.module)(**{**required(rule), **kwargs})


def config(rule, name) -> dict:
    return dict(rule.configs[name])


def nested_params(dtype=jnp.float64, seed=0):
    """A dict of dicts and tuples holding arrays of rank 0 to 3."""
    rng = np.random.RandomState(seed)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype=dtype)

    return {"a": {"b": arr(), "c": arr(2, 3, 2)}, "d": (arr(4), arr(3, 2))}


def small_params(dtype=jnp.float32, seed=0):
    """Two arrays (rank 0 and 2) in a tuple: quicker to compile than :func:`nested_params`."""
    rng = np.random.RandomState(seed)
    return (
        jnp.asarray(rng.standard_normal(()), dtype=dtype),
        jnp.asarray(rng.standard_normal((3, 2)), dtype=dtype),
    )


def grad_sequence(params, n, seed, scale=1.0):
    """``n`` fixed random gradients shaped like ``params`` (never exactly 0)."""
    rng = np.random.RandomState(seed)
    leaves, treedef = jax.tree.flatten(params)
    return [
        treedef.unflatten(
            [jnp.asarray(scale * rng.standard_normal(leaf.shape), dtype=leaf.dtype) for leaf in leaves]
        )
        for _ in range(n)
    ]


def run(opt, params, grads_seq, update=None, rule=None):
    """``rule``: where given, the rule under test, whose step ``k`` gets the objective's value
    ``value=objective(k)`` if it reads it (``drivers.loss_kwargs``)."""
    update = update or opt.update
    state = opt.init(params)
    history = []
    for k, g in enumerate(grads_seq):
        updates, state = update(g, state, params, **(loss_kwargs(rule, k) if rule is not None else {}))
        params = optax.apply_updates(params, updates)
        history.append((updates, state))
    return params, state, history


def assert_trees_close(a, b, rtol=1e-12, atol=1e-14):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def state_slots(state):
    """The fields of a state that mirror the params (all but ``count``), with their values."""
    return {k: v for k, v in state._asdict().items() if k != "count"}


# --------------------------------------------------------------------------------------
# 1. jit


@pytest.mark.parametrize(("rule", "cfg"), CONFIGS, ids=CONFIG_IDS)
def test_jit_matches_eager(rule, cfg):
    opt = transform(rule, **config(rule, cfg))
    params = nested_params(seed=1)
    grads = grad_sequence(params, 3, seed=2)
    p_eager, s_eager, h_eager = run(opt, params, grads)
    p_jit, s_jit, h_jit = run(opt, params, grads, update=jax.jit(opt.update))
    for (u_e, st_e), (u_j, st_j) in zip(h_eager, h_jit):
        assert_trees_close(u_e, u_j)
        assert_trees_close(st_e, st_j)
    assert_trees_close(p_eager, p_jit)
    assert_trees_close(s_eager, s_jit)
    assert int(s_jit.count) == 3
    # the params moved
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_jit)))


# --------------------------------------------------------------------------------------
# 2. pytrees


@pytest.mark.parametrize(("rule", "cfg"), CONFIGS, ids=CONFIG_IDS)
def test_nested_pytree_structure_and_leafwise_results(rule, cfg):
    opt = transform(rule, **config(rule, cfg))
    params = nested_params(seed=3)
    grads = grad_sequence(params, 3, seed=4)
    treedef = jax.tree.structure(params)

    scopes = state_scopes(rule)

    def check_state(st):
        assert jnp.shape(st.count) == ()
        for name, slot in state_slots(st).items():
            if slot is None:
                continue
            if scopes.get(name, "element") == "global":  # one value for the whole optimizer
                assert jnp.shape(slot) == (), name
                continue
            assert jax.tree.structure(slot) == treedef, name
            for s, p in zip(jax.tree.leaves(slot), jax.tree.leaves(params)):
                assert (
                    s.shape == state_shape(rule, name, p.shape, config(rule, cfg)) and s.dtype == p.dtype
                ), name

    state = opt.init(params)
    check_state(state)
    assert int(state.count) == 0
    final, state, history = run(opt, params, grads)
    for updates, st in history:
        assert jax.tree.structure(updates) == treedef
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
            assert u.shape == p.shape and u.dtype == p.dtype
        assert type(st) is type(state)
        check_state(st)
    # every leaf is updated on its own: the same as optimizing that array alone
    for i, leaf in enumerate(jax.tree.leaves(params)):
        alone, _, _ = run(opt, leaf, [jax.tree.leaves(g)[i] for g in grads])
        np.testing.assert_array_equal(np.asarray(alone), np.asarray(jax.tree.leaves(final)[i]))


# --------------------------------------------------------------------------------------
# 3. optax.chain


@pytest.mark.parametrize(("rule", "cfg"), CONFIGS, ids=CONFIG_IDS)
def test_inside_optax_chain(rule, cfg):
    params = nested_params(seed=5)
    grads = grad_sequence(params, 4, seed=6, scale=3.0)
    assert all(float(optax.tree.norm(g)) > 1.0 for g in grads)  # the clipping acts

    chained = optax.chain(optax.clip_by_global_norm(1.0), transform(rule, **config(rule, cfg)))
    p_chain, _, h_chain = run(chained, params, grads)

    clip = optax.clip_by_global_norm(1.0)
    opt = transform(rule, **config(rule, cfg))
    clip_state, state = clip.init(params), opt.init(params)
    p_manual = params
    for g, (u_chain, _) in zip(grads, h_chain):
        clipped, clip_state = clip.update(g, clip_state, p_manual)
        updates, state = opt.update(clipped, state, p_manual)
        assert_trees_equal(u_chain, updates)
        p_manual = optax.apply_updates(p_manual, updates)
    assert_trees_equal(p_chain, p_manual)
    # clipping changed the result
    # (in the parameters, or only in the state: a sign-based rule's steps ignore the gradients' scale)
    p_unclipped, s_unclipped, _ = run(transform(rule, **config(rule, cfg)), params, grads)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves((p_unclipped, s_unclipped)), jax.tree.leaves((p_chain, state)))
    )


# --------------------------------------------------------------------------------------
# 4. schedules


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_constant_schedule_equals_float(rule):
    others = other_hypers(rule)
    params = nested_params(seed=7)
    grads = grad_sequence(params, 4, seed=8)
    p_float, s_float, _ = run(transform(rule, learning_rate=0.03, **others), params, grads)
    for schedule in (lambda count: 0.03, optax.constant_schedule(0.03)):
        p_sched, s_sched, _ = run(transform(rule, learning_rate=schedule, **others), params, grads)
        assert_trees_close(p_float, p_sched)
        assert_trees_close(s_float, s_sched)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_varying_schedule_is_applied_per_step(rule):
    others = other_hypers(rule)
    schedule = optax.linear_schedule(0.05, 0.005, transition_steps=5)
    params = nested_params(seed=9)
    grads = grad_sequence(params, 6, seed=10)
    p_sched, _, _ = run(transform(rule, learning_rate=schedule, **others), params, grads)

    # the same steps, each with the learning rate schedule(step) given as a number, state carried over
    state = transform(rule, **others).init(params)
    p_manual = params
    for k, g in enumerate(grads):
        lr = schedule(jnp.asarray(k, jnp.int32))  # the count is int32: optax gives float32 then
        assert float(lr) == pytest.approx(0.05 + (0.005 - 0.05) * min(k, 5) / 5, rel=1e-6)
        # the float32 number itself, as the schedule gives it (where a rule takes min(lr, 1/sqrt(t)),
        # Adafactor's, a float32 rate makes the minimum float32: a Python float would not round it)
        updates, state = transform(rule, learning_rate=lr, **others).update(g, state, p_manual)
        p_manual = optax.apply_updates(p_manual, updates)
    assert_trees_close(p_sched, p_manual)

    p_const, _, _ = run(transform(rule, learning_rate=0.05, **others), params, grads)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p_const), jax.tree.leaves(p_sched)))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedule_receives_count_from_zero(rule):
    seen = []

    def schedule(count):
        seen.append(int(count))
        return 0.01

    params = nested_params(seed=11)
    run(transform(rule, learning_rate=schedule), params, grad_sequence(params, 4, seed=12))
    assert seen == [0, 1, 2, 3]
    # with every option, gradient accumulation included, the count still counts calls
    seen.clear()
    _, state, _ = run(
        transform(rule, learning_rate=schedule, **other_hypers(rule)),
        params,
        grad_sequence(params, 4, seed=12),
    )
    assert seen == [0, 1, 2, 3] and int(state.count) == 4


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedule_receives_count_from_zero_under_jit(rule):
    seen = []

    def schedule(count):
        jax.debug.callback(lambda c: seen.append(int(c)), count, ordered=True)
        return 0.01 * (1.0 + count)

    opt = transform(rule, learning_rate=schedule)
    params = nested_params(seed=13)
    run(opt, params, grad_sequence(params, 4, seed=14), update=jax.jit(opt.update))
    jax.effects_barrier()
    assert seen == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------
# 5. dtypes


def schedule_f64(count):
    """A schedule that returns float64 (not weakly typed), whatever the params' dtype."""
    return jnp.asarray(0.02, jnp.float64) * (1.0 + 0.1 * count)


def _assert_float32(rule, final, state, history):
    scopes = state_scopes(rule)
    for updates, st in [*history, (final, state)]:
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == jnp.float32
        for name, slot in state_slots(st).items():
            if scopes.get(name) == "global":
                continue  # one value for the optimizer: kept in the default float type by design
            for leaf in jax.tree.leaves(slot):
                assert leaf.dtype == jnp.float32, name
    assert state.count.dtype == jnp.int32


@pytest.mark.parametrize(("rule", "cfg"), CONFIGS, ids=CONFIG_IDS)
def test_float32_params_keep_float32_under_jit_with_float64_schedule(rule, cfg):
    opt = transform(rule, **{**config(rule, cfg), "learning_rate": schedule_f64})
    params = small_params(seed=15)
    final, state, history = run(opt, params, grad_sequence(params, 3, seed=16), update=jax.jit(opt.update))
    _assert_float32(rule, final, state, history)


FLOAT32_LEARNING_RATES = {
    "float": 0.02,
    "float64_schedule": schedule_f64,
    "float64_callable": lambda: jnp.asarray(0.02, jnp.float64),  # Keras's lr called with no arguments
}


@pytest.mark.parametrize(
    ("rule", "lr"),
    [pytest.param(r, lr, id=f"{r.name}-{lr}", marks=()) for lr in FLOAT32_LEARNING_RATES for r in RULES],
)
def test_float32_params_keep_float32_eager_with_every_option(rule, lr):
    opt = transform(rule, learning_rate=FLOAT32_LEARNING_RATES[lr], **other_hypers(rule))
    params = small_params(seed=15)
    final, state, history = run(opt, params, grad_sequence(params, 3, seed=16))
    _assert_float32(rule, final, state, history)


# --------------------------------------------------------------------------------------
# 6. lax.scan


def _scan_vs_loop(opt, params, grads):
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

    def body(carry, g):
        p, s = carry
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), updates

    (p_scan, s_scan), u_scan = jax.jit(lambda p, s, gs: jax.lax.scan(body, (p, s), gs))(
        params, opt.init(params), stacked
    )
    p_loop, s_loop, history = run(opt, params, grads, update=jax.jit(opt.update))  # a Python loop of steps
    return (p_scan, s_scan, u_scan), (p_loop, s_loop, history)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_lax_scan_matches_python_loop(rule):
    opt = transform(rule, **other_hypers(rule))
    params = small_params(jnp.float64, seed=17)
    grads = grad_sequence(params, 20, seed=18)
    (p_scan, s_scan, u_scan), (p_loop, s_loop, history) = _scan_vs_loop(opt, params, grads)
    assert_trees_close(p_scan, p_loop)
    assert_trees_close(s_scan, s_loop)
    assert int(s_scan.count) == 20
    last_updates = jax.tree.map(lambda u: u[-1], u_scan)
    assert_trees_close(last_updates, history[-1][0])
    # every option on: the traced branches (update calls, EMA overwrites) agree with eager Python ones
    p_eager, s_eager, _ = run(opt, params, grads)
    assert_trees_close(p_scan, p_eager)
    assert_trees_close(s_scan, s_eager)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_lax_scan_float32_with_float64_schedule_and_defaults(rule):
    opt = transform(rule, learning_rate=lambda c: jnp.asarray(0.01, jnp.float64) / (1.0 + c))
    params = small_params(seed=19)
    grads = grad_sequence(params, 20, seed=20)
    (p_scan, s_scan, _), (p_loop, s_loop, _) = _scan_vs_loop(opt, params, grads)
    assert_trees_close(p_scan, p_loop, rtol=1e-5, atol=1e-6)
    assert_trees_close(s_scan, s_loop, rtol=1e-5, atol=1e-6)
    for leaf in jax.tree.leaves(p_scan):
        assert leaf.dtype == jnp.float32


# --------------------------------------------------------------------------------------
# 7. hyperparameter checks


@pytest.mark.parametrize(("rule", "name", "value"), BAD_RANGE)
def test_out_of_range_hyperparameter_raises_value_error(rule, name, value):
    with pytest.raises(ValueError) as info:
        transform(rule, **{name: value})
    assert str(info.value) == expected_range_message(name, rule.hypers[name].interval, value)


def test_out_of_range_int_message_shows_the_value_received():
    rule = RULES[0]  # the message comes from the shared runtime: one rule is enough
    with pytest.raises(ValueError) as info:
        transform(rule, learning_rate=-1)
    assert str(info.value) == expected_range_message(
        "learning_rate", rule.hypers["learning_rate"].interval, -1
    )


def test_an_integer_given_as_an_array_says_to_name_it_in_static_args():
    """``optax.inject_hyperparams`` passes every number as an array; an integer (a count of steps) cannot be
    one, and the error says what to do (a helper met the bare "must be an int")."""
    import optax

    rule = next(iter(ALL.values()))
    make = getattr(generated, rule.module)
    rate = {"learning_rate": 0.1} if rule.hypers["learning_rate"].default is None else {}
    tx = optax.inject_hyperparams(make)(**rate, gradient_accumulation_steps=2)
    with pytest.raises(TypeError, match="name it in static_args"):
        tx.init([jnp.ones(3)])
    tx = optax.inject_hyperparams(make, static_args=("gradient_accumulation_steps",))(
        **rate, gradient_accumulation_steps=2
    )
    tx.init([jnp.ones(3)])


@pytest.mark.parametrize(("rule", "name", "value"), WRONG_TYPE)
def test_wrong_type_hyperparameter_raises_type_error(rule, name, value):
    """Passed by the keyword JAX names it (optax's ``b1`` for the rule's ``beta_1``: the rule's name is an
    alias, where None means not given)."""
    keyword = _optax_named(rule).get(name, name)
    with pytest.raises(TypeError, match=f"`{keyword}`") as info:
        transform(rule, **{keyword: value})
    if rule.hypers[name].kind == "int":
        assert str(info.value).startswith(f"`{name}` must be an int or None. Received: {name}={value!r}")


@pytest.mark.parametrize(("rule", "name", "value"), GOOD_ENDS)
def test_closed_range_ends_are_accepted(rule, name, value):
    assert isinstance(transform(rule, **{name: value}), optax.GradientTransformation)


@pytest.mark.parametrize(("rule", "name"), OPTIONS)
def test_option_takes_none_or_a_number(rule, name):
    h = rule.hypers[name]
    values = (
        [None, inside(h), np.int64(inside(h))] if h.kind == "int" else [None, 1, inside(h), np.float32(1.0)]
    )
    for value in values:
        assert isinstance(transform(rule, **{name: value}), optax.GradientTransformation)


@pytest.mark.parametrize(("rule", "combo"), CLIPPING_PAIRS)
def test_two_clipping_options_raise(rule, combo):
    given = {k: CLIPPING_VALUES[k] for k in combo}
    with pytest.raises(ValueError) as info:
        transform(rule, **given)
    assert str(info.value) == clipping_message(given)
    for name in combo:  # each alone is fine
        transform(rule, **{name: given[name]})


@pytest.mark.parametrize(("rule", "name"), BOOL)
@pytest.mark.parametrize("value", ["yes", 1, None], ids=["str", "int", "None"])
def test_non_bool_flag_raises_type_error(rule, name, value):
    with pytest.raises(TypeError, match=f"`{name}`"):
        transform(rule, **{name: value})


def test_keras_form_messages_examples():
    with pytest.raises(ValueError) as info:
        generated.adamax(beta_1=1.5)
    assert str(info.value) == "`beta_1` must be in [0, 1). Received: beta_1=1.5"
    with pytest.raises(ValueError) as info:
        generated.sgd(learning_rate=-0.1)
    assert str(info.value) == "`learning_rate` must be in [0, inf). Received: learning_rate=-0.1"
    with pytest.raises(TypeError):
        generated.sgd(nesterov="yes")


# --------------------------------------------------------------------------------------
# 8. SGD without momentum


def test_sgd_without_momentum_has_no_velocity():
    params = nested_params(seed=21)
    opt = generated.sgd(learning_rate=0.1, momentum=0.0)
    assert opt.init(params).velocity is None
    _, state, _ = run(opt, params, grad_sequence(params, 2, seed=22))
    assert state.velocity is None
    state = generated.sgd(learning_rate=0.1, momentum=0.5).init(params)
    assert jax.tree.structure(state.velocity) == jax.tree.structure(params)


# --------------------------------------------------------------------------------------
# learning rates as arrays (optax's ScalarOrSchedule is float | jax.Array | schedule)


def _static_hypers(rule) -> set[str]:
    """What the JAX module refuses as an array: the real hyperparameters whose values decide which
    computation runs, other than a number that 0 turns off (``compiler.analysis``), and every integer that
    inject_hyperparams would inject (one with a default: optax's ``min_dim_size_to_factor=128``)."""
    from optforge.compiler.analysis import static_hypers, switch_hypers

    program = compiled(rule, "increment")
    floats = {n for n in static_hypers(program) - switch_hypers(program) if rule.hypers[n].kind == "float"}
    return floats | {n for n, h in rule.hypers.items() if h.kind == "int" and h.default is not None}


def _switch_hypers(rule) -> set[str]:
    from optforge.compiler.analysis import switch_hypers

    return switch_hypers(compiled(rule, "increment"))


SWITCHES = [pytest.param(r, n, id=f"{r.name}-{n}") for r in ALL_RULES for n in sorted(_switch_hypers(r))]


@pytest.mark.parametrize(("rule", "name"), SWITCHES)
def test_a_number_that_0_turns_off_is_injected_as_optax_takes_it(rule, name):
    """SGD's momentum, NovoGrad's weight_decay: a test of ``!= 0`` decides whether a computation runs. Injected
    (an array, traced under jit) it takes the computation that is on, as optax.sgd takes an injected
    momentum: a value of 0 then gives the steps of the computation that is off, another value the steps of
    the transformation built with it."""
    factory = getattr(generated, rule.module)
    params = small_params(jnp.float64, seed=41)
    grads = grad_sequence(params, 4, seed=42)
    value = 0.5 * (rule.hypers[name].interval.high if math.isfinite(rule.hypers[name].interval.high) else 0.1)
    static = tuple(sorted(_static_hypers(rule)))  # TorchSGD's momentum: its 0 is not the 'on' maths at 0
    for start in (0.0, value):
        opt = optax.inject_hyperparams(factory, static_args=static)(**{**required(rule), name: start})
        update = jax.jit(opt.update)
        state, p = opt.init(params), params
        for g in grads:
            updates, state = update(g, state, p)
            p = optax.apply_updates(p, updates)
        state, p_ref = transform(rule, **{name: start}).init(params), params
        for g in grads:
            updates, state = transform(rule, **{name: start}).update(g, state, p_ref)
            p_ref = optax.apply_updates(p_ref, updates)
        assert_trees_close(p, p_ref)


@pytest.mark.parametrize("rule", ALL_RULES, ids=[r.name for r in ALL_RULES])
def test_every_number_injected_with_optax_inject_hyperparams(rule):
    """``optax.inject_hyperparams(factory)(...)`` with its defaults (every number then an array in the state,
    traced under jit) runs and gives the transformation's own results; a number that decides which
    computation runs is refused, naming ``static_args``, and works listed there. The injected values are
    changed mid-run (a rate that is traced, not compiled in)."""
    factory = getattr(generated, rule.module)
    static = tuple(sorted(_static_hypers(rule)))
    if static:
        with pytest.raises(TypeError, match="static_args"):
            optax.inject_hyperparams(factory)(**required(rule)).init(nested_params())
    opt = optax.inject_hyperparams(factory, static_args=static)(**required(rule))
    params = nested_params(seed=23)
    grads = grad_sequence(params, 4, seed=24)
    state = opt.init(params)
    rule_name = {o: n for n, o in _optax_named(rule).items()}  # the keyword -> the rule's name
    injected = sorted(rule_name.get(n, n) for n in state.hyperparams)
    rates = [n for n in injected if n != "learning_rate" and 0 < rule.hypers[n].default < 1]
    assert "learning_rate" in injected and not set(static) & set(injected)
    update = jax.jit(opt.update)
    p_inj = params
    changed = {n: rule.hypers[n].default * 0.5 for n in rates[:1]}
    changed["learning_rate"] = (
        0.5 * {**{"learning_rate": rule.hypers["learning_rate"].default}, **required(rule)}["learning_rate"]
    )
    for k, g in enumerate(grads):
        if k == 2:
            for n, v in changed.items():
                state.hyperparams[_optax_named(rule).get(n, n)] = jnp.asarray(v)
        updates, state = update(g, state, p_inj, **loss_kwargs(rule, k))  # inject_hyperparams passes value=
        p_inj = optax.apply_updates(p_inj, updates)
    state = transform(rule).init(params)
    p_ref = params
    for k, g in enumerate(grads):
        updates, state = transform(rule, **(changed if k >= 2 else {})).update(
            g, state, p_ref, **loss_kwargs(rule, k)
        )
        p_ref = optax.apply_updates(p_ref, updates)
    assert_trees_close(p_inj, p_ref)


# optax's names: the concepts optax has are passed as optax names them, the rule's names still accepted
#: a rule's names -> optax's, for what optax's own optimizers call b1, b2, eps (``optax.adam``'s signature
#: is checked to hold them)
OPTAX_NAMES = {"beta_1": "b1", "beta_2": "b2", "beta1": "b1", "beta2": "b2", "epsilon": "eps"}


def _optax_named(rule) -> dict[str, str]:
    return {n: o for n, o in OPTAX_NAMES.items() if n in rule.hypers and o not in rule.hypers}


@pytest.mark.parametrize("rule", ALL_RULES, ids=[r.name for r in ALL_RULES])
def test_optax_names_and_the_rules_names_give_the_same_steps(rule):
    """``b1=a, b2=b, eps=e`` (optax's names) is ``beta_1=a, beta_2=b, epsilon=e`` (the rule's) bit for bit,
    at the same defaults, and ``optax.inject_hyperparams`` injects optax's name, changed mid-run."""
    import inspect

    assert {"b1", "b2", "eps"} <= set(inspect.signature(optax.adam).parameters)
    named = _optax_named(rule)
    if not named:
        pytest.skip(f"{rule.name} has no hyperparameter optax names otherwise")
    factory = getattr(generated, rule.module)
    signature = inspect.signature(factory).parameters
    for name, optax_name in named.items():
        assert signature[optax_name].default == rule.hypers[name].default, optax_name
        assert signature[name].default is None  # the rule's name: an alias that wins where given
        for given in (name, optax_name):  # an out-of-range value: the message names the keyword given
            with pytest.raises(ValueError, match=f"`{given}` must be .* Received: {given}=-1"):
                factory(**required(rule), **{given: -1.0})
    values = {n: 0.5 * rule.hypers[n].default for n in named}
    params = small_params(jnp.float64, seed=31)
    grads = grad_sequence(params, 3, seed=32)
    want = run(transform(rule, **values), params, grads)
    got = run(transform(rule, **{named[n]: v for n, v in values.items()}), params, grads)
    assert_trees_equal(got[0], want[0])
    assert_trees_equal(got[1], want[1])
    first = next(iter(named))
    opt = optax.inject_hyperparams(factory, static_args=tuple(sorted(_static_hypers(rule))))(
        **{**required(rule), named[first]: values[first]}
    )
    assert named[first] in opt.init(params).hyperparams
    state, p = opt.init(params), params
    for k, g in enumerate(grads):
        if k == 1:
            state.hyperparams[named[first]] = jnp.asarray(rule.hypers[first].default)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
    state, p_ref = transform(rule, **{first: values[first]}).init(params), params
    for k, g in enumerate(grads):
        changed = {first: rule.hypers[first].default} if k >= 1 else {first: values[first]}
        updates, state = transform(rule, **changed).update(g, state, p_ref)
        p_ref = optax.apply_updates(p_ref, updates)
    assert_trees_close(p, p_ref)


# --------------------------------------------------------------------------------------
# Keras's shared options


def assert_same_run(a, b) -> None:
    """Two ``run`` results: the same params, updates and states (None for the same slots)."""
    (p_a, s_a, h_a), (p_b, s_b, h_b) = a, b
    assert_trees_equal(p_a, p_b)
    assert {k for k, v in s_a._asdict().items() if v is None} == {
        k for k, v in s_b._asdict().items() if v is None
    }
    assert_trees_equal(s_a, s_b)
    for (u_a, _), (u_b, _) in zip(h_a, h_b):
        assert_trees_equal(u_a, u_b)


@pytest.mark.parametrize(("rule", "name"), ZERO_IS_OFF)
def test_zero_means_off_like_none(rule, name):
    h = rule.hypers[name]
    base = {"use_ema": True}  # so that ema_overwrite_frequency would act
    params = small_params(jnp.float64, seed=25)
    grads = grad_sequence(params, 4, seed=26)
    off = run(transform(rule, **base), params, grads, rule=rule)
    for zero in [0] if h.kind == "int" else [0, 0.0]:
        assert_same_run(off, run(transform(rule, **base, **{name: zero}), params, grads, rule=rule))
    # given a value that is not 0, the option acts (otherwise the check above proves nothing), on the
    # parameters or only on the state (clipping a sign-based rule's gradients)
    on = run(transform(rule, **base, **{name: inside(h)}), params, grads, rule=rule)
    moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(on[:2]), jax.tree.leaves(off[:2])))
    if not moved and clipping_unseen(rule, name):
        pytest.skip(clipping_unseen(rule, name))  # a sign-based rule: the checks above are all there is
    assert moved


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_learning_rate_callable_without_arguments_is_called_each_step(rule):
    calls = []

    def constant():
        calls.append(None)
        return 0.02

    params = small_params(jnp.float64, seed=27)
    grads = grad_sequence(params, 4, seed=28)
    opt = transform(rule, learning_rate=constant)
    state, trained = opt.init(params), params
    for k, g in enumerate(grads):
        updates, state = opt.update(g, state, trained)
        trained = optax.apply_updates(trained, updates)
        assert len(calls) == k + 1  # Keras: called with no arguments, once per step (eagerly)
    as_float, _, _ = run(transform(rule, learning_rate=0.02), params, grads)
    assert_trees_equal(trained, as_float)

    # a value that changes between calls is read at each step, all options on
    others = other_hypers(rule)
    values = [0.03, 0.01, 0.02, 0.005]
    queue = iter(values)
    varying, _, _ = run(transform(rule, learning_rate=lambda: next(queue), **others), params, grads)
    state, manual = transform(rule, **others).init(params), params
    for lr, g in zip(values, grads):
        updates, state = transform(rule, learning_rate=lr, **others).update(g, state, manual)
        manual = optax.apply_updates(manual, updates)
    assert_trees_equal(varying, manual)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_gradient_accumulation_counts_calls_and_updates_every_nth(rule):
    n_acc = 3
    params = small_params(jnp.float64, seed=29)
    grads = grad_sequence(params, 2 * n_acc, seed=30)
    final, state, history = run(transform(rule, gradient_accumulation_steps=n_acc), params, grads)
    for k, (updates, st) in enumerate(history):
        assert int(st.count) == k + 1  # the count counts calls
        moved = any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
        assert moved == ((k + 1) % n_acc == 0), k
    # the same as one step per n_acc calls, with the mean of their gradients
    means = [
        jax.tree.map(lambda *gs: sum(gs) / n_acc, *grads[j : j + n_acc]) for j in range(0, len(grads), n_acc)
    ]
    reference, _, _ = run(transform(rule), params, means)
    assert_trees_close(final, reference, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
@pytest.mark.parametrize(
    "options", [{}, {"weight_decay": 0.01}, {"use_ema": True}], ids=["plain", "wd", "ema"]
)
def test_update_without_params_where_nothing_reads_them(rule, options):
    """optax's convention: ``update(grads, state)`` works where the configuration reads no parameter (as
    optax.nadam's does), equals the call with params (jit too), and says what needs them otherwise."""
    opt = getattr(generated, rule.module)(**required(rule), **options)
    params = small_params(jnp.float64)
    grads = grad_sequence(params, 1, seed=5)[0]
    state = opt.init(params)
    with_params, _ = jax.jit(opt.update)(grads, state, params)
    try:
        without, _ = jax.jit(opt.update)(grads, state)
    except ValueError as exc:
        assert "needs params" in str(exc), str(exc)
        assert options or _own_equations_read_w(rule), f"{rule.name} reads no w, yet: {exc}"
        return
    assert not options, f"{rule.name} with {options} reads w (decay, EMA) but ran without params"
    for a, b in zip(jax.tree.leaves(without), jax.tree.leaves(with_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _own_equations_read_w(rule) -> bool:
    """Whether the rule's own equations (not Keras's options) read ``w`` other than as ``w <- w + ...``."""
    import sympy as sp

    w = sp.Symbol("w")
    return any((eq.expr - w if eq.target == "w" else eq.expr).has(w) for eq in (rule.core or rule.equations))


def test_a_function_of_an_injected_hyperparameter_is_traced(tmp_path):
    """A rule that takes the log, root and exponential of a hyperparameter alone (a helper's rule): under
    ``optax.inject_hyperparams`` the number is a traced array, which ``math.log`` cannot take (a
    ConcretizationTypeError under jit before); the updates equal the plain ones, and NumPy's, to 1e-12."""
    import optax
    import rulekit

    from optforge.compiler.dsl import Rule, exp, g, log, sqrt, w

    r = Rule("HyperFunctions", module="hyper_functions", title="Functions of a number", summary="A test.")
    lr = r.learning_rate(0.1)
    b = r.hyper("b", 0.5, "(0, 1)", "a decay")
    r.assign(w, w - lr * (-log(b)) * sqrt(b) * exp(b) * g, "update")
    mods = rulekit.load(r, tmp_path)
    params = [jnp.asarray(np.linspace(-1.0, 1.0, 5))]
    grads = [jnp.asarray(np.linspace(0.5, 2.0, 5))]
    want = -0.1 * -math.log(0.3) * math.sqrt(0.3) * math.exp(0.3) * np.asarray(grads[0])
    for tx in (
        mods["jax"].hyper_functions(b=0.3),
        optax.inject_hyperparams(mods["jax"].hyper_functions)(b=0.3),
    ):
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        np.testing.assert_allclose(np.asarray(updates[0]), want, rtol=1e-12, atol=0)
    opt = mods["numpy"].HyperFunctions(b=0.3)
    p = [np.array(params[0])]
    stepped, _ = opt.step(p, [np.array(grads[0])], opt.init(p))
    np.testing.assert_allclose(stepped[0] - np.asarray(params[0]), want, rtol=1e-12, atol=1e-15)
