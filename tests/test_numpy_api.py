"""What a NumPy user expects of the generated optimizers (``init`` / ``step``, in place).

Every generic test is parametrized over the whole rule registry, so a new rule
is covered without editing this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import first_step_moves
from drivers import loss_kwargs
from hyper_cases import (
    BAD_RANGE,
    BOOL,
    CLIPPING_PAIRS,
    CLIPPING_VALUES,
    GOOD_ENDS,
    OPTIONS,
    RULE_CONFIG_IDS,
    RULE_CONFIGS,
    RULE_IDS,
    RULES,
    WRONG_TYPE,
    ZERO_IS_OFF,
    clipping_message,
    clipping_unseen,
    expected_range_message,
    inside,
    other_hypers,
    required,
    state_shape,
    stored,
)

import optforge.generated.numpy as generated

# --------------------------------------------------------------------------------------
# helpers


def optimizer(rule, **kwargs):
    """The rule's optimizer; a required learning rate (default None, as in optax) is filled in."""
    return getattr(generated, rule.name)(**{**required(rule), **kwargs})


SHAPES = {"w1": (3, 4), "b1": (4,), "s": (), "w2": (2, 2, 3)}


def make_params(seed=0, dtype=np.float64, shapes=SHAPES) -> dict:
    rng = np.random.RandomState(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in shapes.items()}


def make_grads(params: dict, n: int, seed: int) -> list[dict]:
    rng = np.random.RandomState(seed)
    return [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()} for _ in range(n)]


def state_arrays(state) -> dict:
    """``(slot, key) -> array`` for every per-parameter array the state holds."""
    out = {}
    for name, slot in state._asdict().items():
        if not isinstance(slot, (list, tuple, dict)):
            continue  # the step, a slot that is None, one value for the whole optimizer
        items = slot.items() if isinstance(slot, dict) else enumerate(slot)
        for key, arr in items:
            out[(name, key)] = arr
    return out


def state_globals(state) -> dict:
    """The state's entries that are one value for the whole optimizer (the step included)."""
    return {
        k: v for k, v in state._asdict().items() if v is not None and not isinstance(v, (list, tuple, dict))
    }


# --------------------------------------------------------------------------------------
# 1. containers and in-place updates


@pytest.mark.parametrize(("rule", "cfg"), RULE_CONFIGS, ids=RULE_CONFIG_IDS)
def test_list_and_dict_give_the_same_results(rule, cfg):
    kwargs = rule.configs[cfg]
    start = make_params(seed=1)
    grads = make_grads(start, 5, seed=2)
    keys = list(start)

    as_dict = {k: v.copy() for k, v in start.items()}
    opt = optimizer(rule, **kwargs)
    state_d = opt.init(as_dict)
    for k, g in enumerate(grads):
        as_dict, state_d = opt.step(as_dict, g, state_d, **loss_kwargs(rule, k))

    as_list = [start[k].copy() for k in keys]
    opt = optimizer(rule, **kwargs)
    state_l = opt.init(as_list)
    for k, g in enumerate(grads):
        as_list, state_l = opt.step(as_list, [g[key] for key in keys], state_l, **loss_kwargs(rule, k))

    assert isinstance(as_list, list) and isinstance(as_dict, dict)
    assert state_d.step == state_l.step == 5
    assert state_globals(state_d) == state_globals(state_l)
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(as_list[i], as_dict[k])
        assert not np.array_equal(as_list[i], start[k])
    arrays_d, arrays_l = state_arrays(state_d), state_arrays(state_l)
    assert {(n, keys[i]) for n, i in arrays_l} == set(arrays_d)
    for (n, i), arr in arrays_l.items():
        np.testing.assert_array_equal(arr, arrays_d[(n, keys[i])])


@pytest.mark.parametrize("container", ["list", "dict"])
@pytest.mark.parametrize(("rule", "cfg"), RULE_CONFIGS, ids=RULE_CONFIG_IDS)
def test_updates_in_place_without_new_state_arrays(rule, cfg, container):
    start = make_params(seed=3)
    params = dict(start) if container == "dict" else list(start.values())
    originals = dict(params) if container == "dict" else dict(enumerate(params))
    snapshot = {k: v.copy() for k, v in originals.items()}
    opt = optimizer(rule, **rule.configs[cfg])
    state = opt.init(params)
    arrays = state_arrays(state)
    for step, g in enumerate(make_grads(start, 3, seed=4)):
        grads = g if container == "dict" else list(g.values())
        new_params, new_state = opt.step(params, grads, state, **loss_kwargs(rule, step))
        assert new_params is params
        for k, arr in originals.items():
            assert new_params[k] is arr
        new_arrays = state_arrays(new_state)
        assert set(new_arrays) == set(arrays)
        for key, arr in arrays.items():
            assert new_arrays[key] is arr, key
        params, state = new_params, new_state
    assert state.step == 3
    # the caller's arrays changed (a rule whose first step does not move them: some of them)
    changed = [not np.array_equal(arr, snapshot[k]) for k, arr in originals.items()]
    assert all(changed) if first_step_moves(rule) else any(changed)


FLOAT64_LEARNING_RATES = {
    "schedule": lambda step: np.float64(0.01),
    "callable": lambda: np.float64(0.01),  # Keras's learning rate called with no arguments
}


@pytest.mark.parametrize("lr", list(FLOAT64_LEARNING_RATES))
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_float32_is_kept(rule, lr):
    params = make_params(seed=5, dtype=np.float32)
    opt = optimizer(rule, learning_rate=FLOAT64_LEARNING_RATES[lr], **other_hypers(rule))
    state = opt.init(params)
    for k, g in enumerate(make_grads(params, 3, seed=6)):
        params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
    for v in params.values():
        assert v.dtype == np.float32
    for key, arr in state_arrays(state).items():
        assert arr.dtype == np.float32, key
        assert arr.shape == state_shape(rule, key[0], params[key[1]].shape, other_hypers(rule)), key


# --------------------------------------------------------------------------------------
# 2. schedules


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedule_receives_step_from_zero(rule):
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.02 / (1 + step)

    others = other_hypers(rule)
    params = make_params(seed=7)
    grads = make_grads(params, 4, seed=8)
    opt = optimizer(rule, learning_rate=schedule, **others)
    state = opt.init(params)
    for k, g in enumerate(grads):
        params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
    assert seen == [0, 1, 2, 3]

    # the same as a float learning rate of schedule(step) at each step, state carried over
    manual = make_params(seed=7)
    state = optimizer(rule, **others).init(manual)
    for k, g in enumerate(grads):
        manual, state = optimizer(rule, learning_rate=0.02 / (1 + k), **others).step(
            manual, g, state, **loss_kwargs(rule, k)
        )
    for k in params:
        np.testing.assert_array_equal(params[k], manual[k])


# --------------------------------------------------------------------------------------
# 3. errors


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_grad_with_another_shape_names_key_and_shapes(rule):
    opt = optimizer(rule, **other_hypers(rule))
    params = make_params(seed=9)
    state = opt.init(params)
    grads = make_grads(params, 1, seed=10)[0]
    grads["w1"] = np.ones((4, 3))
    with pytest.raises(ValueError) as info:
        opt.step(params, grads, state, **loss_kwargs(rule, 0))
    msg = str(info.value)
    assert "'w1'" in msg and "(3, 4)" in msg and "(4, 3)" in msg

    as_list = list(params.values())
    state = opt.init(as_list)
    glist = [np.ones(v.shape) for v in as_list]
    glist[1] = np.ones((5,))
    with pytest.raises(ValueError) as info:
        opt.step(as_list, glist, state, **loss_kwargs(rule, 0))
    msg = str(info.value)
    assert "[1]" in msg and "(4,)" in msg and "(5,)" in msg


def test_dict_grads_are_matched_by_key_not_order():
    rule = RULES[0]  # the matching is the shared runtime's: one rule is enough
    opt = optimizer(rule, **other_hypers(rule))
    params = make_params(seed=25)
    reference = {k: v.copy() for k, v in params.items()}
    state, ref_state = opt.init(params), opt.init(reference)
    for g in make_grads(params, 2, seed=26):
        reference, ref_state = opt.step(reference, g, ref_state)
        params, state = opt.step(params, dict(reversed(list(g.items()))), state)
    for k in params:
        np.testing.assert_array_equal(params[k], reference[k])


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_grad_with_another_dtype(rule):
    opt = optimizer(rule)
    params = make_params(seed=11)
    state = opt.init(params)
    grads = make_grads(params, 1, seed=12)[0]
    grads["b1"] = grads["b1"].astype(np.float32)
    with pytest.raises(ValueError, match="'b1'"):
        opt.step(params, grads, state, **loss_kwargs(rule, 0))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_wrong_number_of_grads(rule):
    opt = optimizer(rule)
    params = list(make_params(seed=13).values())
    state = opt.init(params)
    grads = [np.ones(p.shape) for p in params]
    with pytest.raises(ValueError):
        opt.step(params, grads[:-1], state, **loss_kwargs(rule, 0))
    with pytest.raises(ValueError):
        opt.step(params, grads + [np.ones(3)], state, **loss_kwargs(rule, 0))
    dparams = make_params(seed=13)
    dstate = opt.init(dparams)
    dgrads = {k: np.ones(v.shape) for k, v in dparams.items()}
    del dgrads["s"]
    with pytest.raises(ValueError):
        opt.step(dparams, dgrads, dstate, **loss_kwargs(rule, 0))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
@pytest.mark.parametrize(
    "params",
    [np.zeros(3), 1.5, "abc", {1.0, 2.0}, None],
    ids=["ndarray", "float", "str", "set", "None"],
)
def test_params_not_a_list_or_dict(rule, params):
    with pytest.raises(TypeError):
        optimizer(rule).init(params)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_params_not_a_list_or_dict_in_step(rule):
    opt = optimizer(rule)
    state = opt.init([np.zeros(3)])
    with pytest.raises(TypeError):
        opt.step(np.zeros(3), [np.ones(3)], state, **loss_kwargs(rule, 0))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("empty", [[], {}], ids=["list", "dict"])
def test_empty_params(rule, empty):
    with pytest.raises(ValueError):
        optimizer(rule).init(empty)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_integer_arrays(rule):
    opt = optimizer(rule)
    with pytest.raises(TypeError):
        opt.init([np.arange(3)])
    params = [np.zeros(3)]
    state = opt.init(params)
    with pytest.raises(TypeError):
        opt.step(params, [np.arange(3)], state, **loss_kwargs(rule, 0))


@pytest.mark.parametrize(("rule", "name", "value"), BAD_RANGE)
def test_out_of_range_hyperparameter_raises_value_error(rule, name, value):
    with pytest.raises(ValueError) as info:
        optimizer(rule, **{name: value})
    assert str(info.value) == expected_range_message(name, rule.hypers[name].interval, value)


def test_out_of_range_int_message_shows_the_value_received():
    rule = RULES[0]  # the message comes from the shared runtime: one rule is enough
    with pytest.raises(ValueError) as info:
        optimizer(rule, learning_rate=-1)
    assert str(info.value) == expected_range_message(
        "learning_rate", rule.hypers["learning_rate"].interval, -1
    )


@pytest.mark.parametrize(("rule", "name", "value"), WRONG_TYPE)
def test_wrong_type_hyperparameter_raises_type_error(rule, name, value):
    with pytest.raises(TypeError, match=f"`{name}`") as info:
        optimizer(rule, **{name: value})
    if rule.hypers[name].kind == "int":
        assert str(info.value).startswith(f"`{name}` must be an int or None. Received: {name}={value!r}")


@pytest.mark.parametrize(("rule", "name", "value"), GOOD_ENDS)
def test_closed_range_ends_are_accepted(rule, name, value):
    opt = optimizer(rule, **{name: value})
    kept = getattr(opt, name)
    assert kept == stored(rule.hypers[name], value) and type(kept) is type(stored(rule.hypers[name], value))


@pytest.mark.parametrize(("rule", "name"), OPTIONS)
def test_option_is_off_by_default_and_takes_none_or_a_number(rule, name):
    h = rule.hypers[name]
    assert getattr(optimizer(rule), name) == h.default  # off (None), or on at its default (a value)
    assert getattr(optimizer(rule, **{name: None}), name) is None
    if h.kind == "int":
        value, kinds = inside(h), [int, np.int64]
    else:
        value, kinds = 1, [float, int, np.float32, np.float64]  # a whole number is a valid float too
        assert value in h.interval
    for kind in kinds:
        kept = getattr(optimizer(rule, **{name: kind(value)}), name)
        assert kept == value and type(kept) is (int if h.kind == "int" else float)


@pytest.mark.parametrize(("rule", "combo"), CLIPPING_PAIRS)
def test_two_clipping_options_raise(rule, combo):
    given = {k: CLIPPING_VALUES[k] for k in combo}
    with pytest.raises(ValueError) as info:
        optimizer(rule, **given)
    assert str(info.value) == clipping_message(given)
    for name in combo:  # each alone is fine
        assert getattr(optimizer(rule, **{name: given[name]}), name) == given[name]


@pytest.mark.parametrize(("rule", "name"), BOOL)
@pytest.mark.parametrize("value", ["yes", 1, None], ids=["str", "int", "None"])
def test_non_bool_flag_raises_type_error(rule, name, value):
    with pytest.raises(TypeError, match=f"`{name}`"):
        optimizer(rule, **{name: value})


def test_keras_form_messages_examples():
    with pytest.raises(ValueError) as info:
        generated.Adamax(beta_1=1.5)
    assert str(info.value) == "`beta_1` must be in [0, 1). Received: beta_1=1.5"
    with pytest.raises(ValueError) as info:
        generated.SGD(learning_rate=-0.1)
    assert str(info.value) == "`learning_rate` must be in [0, inf). Received: learning_rate=-0.1"
    with pytest.raises(TypeError):
        generated.SGD(nesterov="yes")


# --------------------------------------------------------------------------------------
# 4. rank-0 and zero-size arrays


@pytest.mark.parametrize(("rule", "cfg"), RULE_CONFIGS, ids=RULE_CONFIG_IDS)
def test_rank0_and_zero_size_arrays(rule, cfg):
    kwargs = rule.configs[cfg]
    rng = np.random.RandomState(14)
    params = {
        "scalar": np.array(0.7),
        "empty": np.zeros((0,)),
        "empty2": np.zeros((3, 0)),
        "one": np.array([0.7]),
    }
    ids = {k: v for k, v in params.items()}
    opt = optimizer(rule, **kwargs)
    state = opt.init(params)
    for k in range(4):
        g = rng.standard_normal()
        grads = {
            "scalar": np.array(g),
            "empty": np.zeros((0,)),
            "empty2": np.zeros((3, 0)),
            "one": np.array([g]),
        }
        params, state = opt.step(params, grads, state, **loss_kwargs(rule, k))
    for k, v in ids.items():
        assert params[k] is v
    assert params["scalar"].shape == () and params["empty"].shape == (0,) and params["empty2"].shape == (3, 0)
    for key, arr in state_arrays(state).items():
        assert arr.shape == state_shape(rule, key[0], params[key[1]].shape, kwargs), key
    # a rank-0 array is optimized like a one-element array
    assert np.isfinite(params["scalar"]) and params["scalar"] != 0.7
    np.testing.assert_array_equal(params["scalar"], params["one"][0])


# --------------------------------------------------------------------------------------
# 5. Keras's shared options


def run_steps(rule, start: dict, grads: list[dict], loss_steps=None, **kwargs):
    """``(opt, params, state)`` after a step per gradient, from a copy of ``start``. ``loss_steps``: the
    index ``k`` whose objective value (``drivers.objective``) each step is given, where the rule reads it
    (default 0, 1, 2, ...)."""
    params = {k: v.copy() for k, v in start.items()}
    opt = optimizer(rule, **kwargs)
    state = opt.init(params)
    for k, g in zip(range(len(grads)) if loss_steps is None else loss_steps, grads, strict=True):
        params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
    return opt, params, state


def assert_same_run(a, b) -> None:
    (_, params_a, state_a), (_, params_b, state_b) = a, b
    for k in params_a:
        np.testing.assert_array_equal(params_a[k], params_b[k])
    assert state_globals(state_a) == state_globals(state_b)
    arrays_a, arrays_b = state_arrays(state_a), state_arrays(state_b)
    assert set(arrays_a) == set(arrays_b)  # no state for an option that is off
    for key, arr in arrays_a.items():
        np.testing.assert_array_equal(arr, arrays_b[key])


@pytest.mark.parametrize(("rule", "name"), ZERO_IS_OFF)
def test_zero_means_off_like_none(rule, name):
    h = rule.hypers[name]
    base = {"use_ema": True}  # so that ema_overwrite_frequency would act
    start = make_params(seed=27)
    grads = make_grads(start, 4, seed=28)
    off = run_steps(rule, start, grads, **base)
    assert_same_run(off, run_steps(rule, start, grads, **base, **{name: None}))
    for zero in [0] if h.kind == "int" else [0, 0.0, np.float64(0.0)]:
        run = run_steps(rule, start, grads, **base, **{name: zero})
        assert getattr(run[0], name) is None
        assert_same_run(off, run)
    # given a value that is not 0, the option acts (otherwise the checks above prove nothing): on the
    # parameters, or on the state where the rule does not see it in them (clipping the gradients of a
    # sign-based rule, Lion, scales its momentum but may leave every sign as it was)
    _, on, on_state = run_steps(rule, start, grads, **base, **{name: inside(h)})
    params_moved = any(not np.array_equal(on[k], off[1][k]) for k in on)
    state_moved = any(not np.array_equal(a, b) for a, b in zip(_leaves(on_state), _leaves(off[2])))
    if not (params_moved or state_moved) and clipping_unseen(rule, name):
        pytest.skip(clipping_unseen(rule, name))  # a sign-based rule: the checks above are all there is
    assert params_moved or state_moved


def _leaves(x):
    """The arrays of a state (a named tuple of dicts, lists and arrays), in order."""
    if x is None:
        return
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _leaves(v)
    else:
        yield np.asarray(x)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_learning_rate_callable_without_arguments_is_called_each_step(rule):
    calls = []

    def constant():
        calls.append(None)
        return 0.02

    start = make_params(seed=29)
    grads = make_grads(start, 4, seed=30)
    params = {k: v.copy() for k, v in start.items()}
    opt = optimizer(rule, learning_rate=constant)
    state = opt.init(params)
    for k, g in enumerate(grads):
        params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
        assert len(calls) == k + 1  # Keras: called with no arguments, once per step
    _, as_float, _ = run_steps(rule, start, grads, learning_rate=0.02)
    for k in params:
        np.testing.assert_array_equal(params[k], as_float[k])

    # a value that changes between calls is read at each step, all options on
    others = other_hypers(rule)
    values = [0.03, 0.01, 0.02, 0.005]
    queue = iter(values)
    _, varying, _ = run_steps(rule, start, grads, learning_rate=lambda: next(queue), **others)
    manual = {k: v.copy() for k, v in start.items()}
    state = optimizer(rule, **others).init(manual)
    for k, (lr, g) in enumerate(zip(values, grads)):
        manual, state = optimizer(rule, learning_rate=lr, **others).step(
            manual, g, state, **loss_kwargs(rule, k)
        )
    for k in manual:
        np.testing.assert_array_equal(varying[k], manual[k])


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_gradient_accumulation_counts_calls_and_updates_every_nth(rule):
    n_acc = 3
    start = make_params(seed=31)
    grads = make_grads(start, 2 * n_acc, seed=32)
    params = {k: v.copy() for k, v in start.items()}
    opt = optimizer(rule, gradient_accumulation_steps=n_acc)
    state = opt.init(params)
    for k, g in enumerate(grads):
        before = {key: v.copy() for key, v in params.items()}
        params, state = opt.step(params, g, state, **loss_kwargs(rule, k))
        assert state.step == k + 1  # the step counter counts calls
        changed = any(not np.array_equal(params[key], before[key]) for key in params)
        # only an update call moves the parameters (the first does not where the rule's first step does not)
        moves = (k + 1) % n_acc == 0 and (k + 1 > n_acc or first_step_moves(rule))
        assert changed == moves, k
    # the same as one step per n_acc calls, with the mean of their gradients (and, for a rule that reads
    # the objective's value, the value given at the update call, as optax.MultiSteps passes it on)
    means = [
        {key: np.asarray(sum(g[key] for g in grads[j : j + n_acc]) / n_acc) for key in start}
        for j in range(0, len(grads), n_acc)
    ]
    _, reference, _ = run_steps(rule, start, means, loss_steps=range(n_acc - 1, len(grads), n_acc))
    for key in params:
        np.testing.assert_allclose(params[key], reference[key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_no_floating_point_error_with_every_option(rule):
    # valid hyperparameters and finite gradients: no division by zero, not even in a value that a call
    # accumulating gradients leaves unused (np.seterr(all="raise") users, warnings turned into errors)
    start = make_params(seed=33)
    with np.errstate(all="raise"):
        _, params, _ = run_steps(rule, start, make_grads(start, 4, seed=34), **other_hypers(rule))
    assert all(np.isfinite(v).all() for v in params.values())


def _second_step_peak(opt, params: list, grads: list, rule=None) -> int:
    """The peak of new memory (bytes) during a second step, in place (the first sizes the scratch buffers).
    ``rule``: where given, each step gets the objective's value if the rule reads it."""
    import tracemalloc

    losses = [loss_kwargs(rule, k) if rule is not None else {} for k in range(2)]
    state = opt.init(params)
    params, state = opt.step(params, grads, state, **losses[0])
    tracemalloc.start()
    try:
        opt.step(params, grads, state, **losses[1])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_a_step_allocates_nothing_in_proportion_to_the_parameters(rule):
    """After the first step (which sizes the scratch buffers), a plain NumPy step's peak of new memory
    is a small fraction of one tensor: the temporaries go into the optimizer's scratch buffers. (NumPy's
    own iterator buffers, up to 64 KiB whatever the sizes: a row times a column, Adafactor's estimate,
    takes 65 KB for a 300 x 400 matrix and 1 KB for a 3000 x 4000 one; the tensors are large enough that
    this stays under the bound.)"""
    shapes = [(600, 800), (480_000,), (50,)]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    options = {"clipvalue": 0.5, "use_ema": True, "loss_scale_factor": 2.0}
    opt = getattr(generated, rule.name)(
        **{**rule.configs.get("momentum", rule.configs["default"]), **options}
    )
    peak = _second_step_peak(opt, params, grads, rule)
    one_tensor = 480_000 * 4
    assert peak < one_tensor / 10, f"a step allocated up to {peak} bytes (one tensor is {one_tensor})"


def test_a_select_on_arrays_allocates_nothing_and_keeps_float32(tmp_path):
    """``where(s > 0, 1/sqrt(s + eps), 0)`` (optax's Adagrad) is a comparison into a boolean buffer and a
    masked copy in NumPy and torch: a float32 step allocates nothing in proportion to the parameters, and
    the result equals ``np.where``'s, written out independently (float64)."""
    from drivers import assert_close
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, sqrt, w, where

    r = Rule("SelectStep", title="a step taken only where the sum of squares is positive")
    lr = r.learning_rate(0.1)
    eps = r.hyper("eps", 0.0, "[0, inf)", "inside the root")
    s = r.state("s", 0.0, "sum of squares")
    r.assign(s, s + g**2)
    r.assign(w, w - lr * where(s > 0, 1 / sqrt(s + eps), 0) * g)
    mods = load(r, tmp_path)
    assert "np.copyto(" in (tmp_path / "numpy_select_step.py").read_text()

    rng = np.random.default_rng(3)
    shapes = [(300, 400), (120_000,), (7,)]
    params = [rng.standard_normal(sh).astype(np.float32) for sh in shapes]
    grads = [np.where(rng.random(sh) < 0.3, 0, rng.standard_normal(sh)).astype(np.float32) for sh in shapes]
    peak = _second_step_peak(mods["numpy"].SelectStep(), params, grads)
    assert params[0].dtype == np.float32
    assert peak < 120_000 * 4 / 10, f"a step allocated up to {peak} bytes"

    # float64, with elements whose sum stays 0 (no step there): the literal transcription
    start = [rng.standard_normal(sh) for sh in shapes]
    grads = [[np.where(rng.random(sh) < 0.3, 0, rng.standard_normal(sh)) for sh in shapes] for _ in range(3)]
    want = [p.copy() for p in start]
    sums = [np.zeros_like(p) for p in start]
    for gs in grads:
        for i, x in enumerate(gs):
            sums[i] = sums[i] + x**2
            with np.errstate(divide="ignore"):
                want[i] = want[i] - 0.1 * np.where(sums[i] > 0, 1 / np.sqrt(sums[i] + 0.0), 0) * x
    with np.errstate(divide="ignore"):  # 1/sqrt(0) where the sum is 0: computed, not taken
        for path in ("numpy", "torch"):  # SymPy orders the rule's products: the last bit may differ
            assert_close(steps(mods, r, start, grads, path), want, 1e-12, path)


def test_a_select_on_arrays_computes_each_branch_only_where_it_is_taken(tmp_path):
    """Per-element selects, nested, whose branches not taken would take the root or the logarithm of a
    negative number or divide by zero, with a reduction over the tensor inside one branch (computed over
    the whole tensor, whatever each element's test): NumPy's operations take the branch's mask
    (``where=``), so a step raises nothing under ``np.errstate(all="raise")`` with warnings as errors
    (each branch was computed on every element: ``invalid value encountered in sqrt``), and every backend
    and kernel equals the transcription in float64."""
    import warnings

    from drivers import assert_close
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, log, sqrt, tensor_sum, w, where

    r = Rule("Branches", title="each branch only where it is taken")
    lr = r.learning_rate(0.1)
    inner = where(g > 2, sqrt(g - 2) + tensor_sum(g**2), log(g))
    r.assign(w, w - lr * where(g > 0, inner, 1 / (g - 1)), "update")
    mods = load(r, tmp_path)
    assert "where=_m" in (tmp_path / "numpy_branches.py").read_text()

    rng = np.random.default_rng(3)
    params0 = [rng.standard_normal(7), rng.standard_normal((3, 4))]
    # g = 1 takes log(1) (1/(g - 1) would divide by zero); g = -1 and g = 0.5 take 1/(g - 1)
    grads = [[np.array([4.0, 1.0, -1.0, 0.5, 3.0, -2.0, 2.5]), 3 * rng.standard_normal((3, 4))]] * 3
    want = [p.copy() for p in params0]
    with np.errstate(all="ignore"):  # the transcription computes every branch, as np.where does
        for gs in grads:
            for i, x in enumerate(gs):
                a = np.where(x > 2, np.sqrt(x - 2) + np.sum(x**2), np.log(x))
                want[i] = want[i] - 0.1 * np.where(x > 0, a, 1 / (x - 1))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = steps(mods, r, params0, grads, "numpy")
    assert_close(got, want, 1e-12, "numpy")
    for path in ("numpy fused", "jax", "torch"):
        assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)


def test_a_select_on_per_tensor_values_computes_only_the_branch_it_takes(tmp_path):
    """A LARS-like trust ratio ``where(wn > 0 and gn > 0, wn / gn, 1)`` on per-tensor norms is a Python
    conditional in NumPy (``wn / gn if ... else 1``): a tensor whose norms are 0 steps without a
    floating-point error under ``np.errstate(all="raise")`` (``np.where`` computed 0/0 first), and every
    backend and kernel equals the transcription in float64."""
    from drivers import assert_close
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, tensor_norm, w, where

    r = Rule("Trust", title="a LARS-like trust ratio")
    lr = r.learning_rate(0.1)
    wn = r.let("wn", tensor_norm(w), "weight norm")
    gn = r.let("gn", tensor_norm(g), "gradient norm")
    ratio = r.let("ratio", where((wn > 0) & (gn > 0), wn / gn, 1), "trust ratio")
    r.assign(w, w - lr * ratio * g, "update")
    mods = load(r, tmp_path)
    assert "wn / gn if " in (tmp_path / "numpy_trust.py").read_text()

    rng = np.random.default_rng(7)
    params0 = [np.zeros(3), rng.standard_normal((4, 2)), rng.standard_normal(5)]
    grads = [
        [np.zeros(3), rng.standard_normal((4, 2)), np.zeros(5) if k == 0 else rng.standard_normal(5)]
        for k in range(4)
    ]
    want = [p.copy() for p in params0]
    for gs in grads:
        for i, x in enumerate(gs):
            a, b = float(np.linalg.norm(want[i])), float(np.linalg.norm(x))
            want[i] = want[i] - 0.1 * (a / b if a > 0 and b > 0 else 1.0) * x
    with np.errstate(all="raise"):
        for path in ("numpy", "numpy fused"):
            assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)
    for path in ("jax", "torch"):
        assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)
