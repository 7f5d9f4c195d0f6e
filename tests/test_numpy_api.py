"""What a NumPy user expects of the generated optimizers (``init`` / ``step``, in place).

Every generic test is parametrized over the whole rule registry, so a new rule
is covered without editing this file.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

import optforge.generated.numpy as generated
from optforge.rules import registry

RULES = list(registry().values())
RULE_IDS = [r.name for r in RULES]
RULE_CONFIGS = [(r, name) for r in RULES for name in r.configs]
RULE_CONFIG_IDS = [f"{r.name}-{name}" for r, name in RULE_CONFIGS]


# --------------------------------------------------------------------------------------
# helpers


def optimizer(rule, **kwargs):
    """The rule's optimizer; a required learning rate (default None, as in optax) is filled in."""
    if rule.hypers["learning_rate"].default is None:
        kwargs.setdefault("learning_rate", 0.01)
    return getattr(generated, rule.name)(**kwargs)


@functools.cache
def state_scopes(rule) -> dict[str, str]:
    """State name -> "global" (one value), "tensor" (one 0-d array per parameter) or "element" (like it)."""
    from optforge.compiler.pipeline import compile_rule

    return {st.name: st.scope.name.lower() for st in compile_rule(rule).states}


CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")  # Keras: at most one of them


def is_option(h) -> bool:
    """One of Keras's shared options: ``None`` (its default) means off."""
    return h.default is None and h.kind in ("float", "int")


def inside(h) -> float | int:
    """A valid value of ``h`` inside its range, other than its default and other than an "off" value.

    An int option gets the smallest valid int from 2 up (1 would make ``ema_overwrite_frequency`` trivial).
    """
    iv = h.interval
    if h.kind == "int":
        k = max(2, math.ceil(iv.low))
        if k == iv.low and not iv.low_closed:
            k += 1
        assert k in iv
        return k
    lo = iv.low if math.isfinite(iv.low) else -1.0
    hi = iv.high if math.isfinite(iv.high) else lo + 2.0
    value = lo + 0.37 * (hi - lo)
    assert value in iv and value != h.default and value != 0
    return value


def other_hypers(rule) -> dict:
    """A valid non-default value for every hyperparameter but the learning rate (from the configs if set).

    Every option is given (an int for an int option), but only one of the clipping options, which one
    turning with the rule, so that the registry covers all three.
    """
    out = {}
    for name, h in rule.hypers.items():
        if h.kind == "learning_rate":
            continue
        found = [cfg[name] for cfg in rule.configs.values() if cfg.get(name) not in (h.default, None)]
        if found:
            out[name] = found[0]
        elif h.kind == "bool":
            out[name] = not h.default
        else:
            out[name] = inside(h)
    assert all(name in rule.hypers for name in CLIPPING), rule.name
    keep = CLIPPING[RULE_IDS.index(rule.name) % len(CLIPPING)]
    for name in CLIPPING:
        if name != keep:
            out.pop(name)
    return out


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


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def expected_range_message(name, interval, value) -> str:
    lo = "[" if interval.low_closed else "("
    hi = "]" if interval.high_closed else ")"
    return (
        f"`{name}` must be in {lo}{_fmt(interval.low)}, {_fmt(interval.high)}{hi}. Received: {name}={value!r}"
    )


def out_of_range(h) -> list:
    """Values outside ``h``'s range, generated from its declaration (ints for an int option)."""
    iv = h.interval
    if h.kind == "int":  # a float given to an int option is a type error: see WRONG_TYPE
        values = []
        if math.isfinite(iv.high):
            values.append(math.floor(iv.high) + 1 if iv.high_closed else math.ceil(iv.high))
        if math.isfinite(iv.low):
            values.append(math.ceil(iv.low) - 1 if iv.low_closed else math.floor(iv.low))
        if 0 not in iv and not h.zero_is_off and 0 not in values:
            values.append(0)
        return values
    values = [math.nan]
    if math.isfinite(iv.high):
        values.append(iv.high + 1.0)
    if math.isfinite(iv.low):
        values.append(iv.low - 1.0)
    if not iv.high_closed:
        values.append(float(iv.high))
    if not iv.low_closed:
        values.append(float(iv.low))
    return values


def closed_ends(h) -> list:
    """The finite ends that ``h``'s range includes (ints for an int option)."""
    iv = h.interval
    ends = [
        x for x, closed in ((iv.low, iv.low_closed), (iv.high, iv.high_closed)) if closed and math.isfinite(x)
    ]
    return [int(x) for x in ends] if h.kind == "int" else [float(x) for x in ends]


def stored(h, value):
    """What the optimizer keeps for a valid ``value`` of ``h``: 0 of an option where it means off is None."""
    return None if (h.zero_is_off and value is not None and value == 0) else value


class Callable:
    """A callable (with a stable repr for the test ids): only the learning rate may be one."""

    def __call__(self, *args):
        return 0.5

    def __repr__(self) -> str:
        return "a_callable"


def wrong_types(h) -> list:
    """Values of a wrong type for a non-bool hyperparameter: None is valid for an option (off), and a
    float (even a whole one, nan or inf) is not an int."""
    values = ["0.5", True]
    if not is_option(h):
        values.append(None)
    if h.kind != "learning_rate":
        values.append(Callable())
    if h.kind == "int":
        values += [2.5, 2.0, math.nan, math.inf]
    return values


BAD_RANGE = [
    pytest.param(r, name, v, id=f"{r.name}-{name}={v!r}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
    for v in out_of_range(h)
]
GOOD_ENDS = [
    pytest.param(r, name, v, id=f"{r.name}-{name}={v!r}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
    for v in closed_ends(h)
]
WRONG_TYPE = [
    pytest.param(r, name, v, id=f"{r.name}-{name}={v!r}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
    for v in wrong_types(h)
]
BOOL = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind == "bool"
]
OPTIONS = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if is_option(h)
]
ZERO_IS_OFF = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if is_option(h) and h.zero_is_off
]
CLIPPING_PAIRS = [
    pytest.param(r, combo, id=f"{r.name}-{'+'.join(combo)}")
    for r in RULES
    for combo in [*itertools.combinations(CLIPPING, 2), CLIPPING]
]


CLIPPING_VALUES = {"clipnorm": 1.0, "clipvalue": 0.5, "global_clipnorm": 2.0}


def clipping_message(given: dict) -> str:
    names = ", ".join(f"`{k}`" for k in CLIPPING)
    received = ", ".join(f"{k}={given.get(k)}" for k in CLIPPING)
    return f"Only one of {names} can be set. Received: {received}"


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
    for g in grads:
        as_dict, state_d = opt.step(as_dict, g, state_d)

    as_list = [start[k].copy() for k in keys]
    opt = optimizer(rule, **kwargs)
    state_l = opt.init(as_list)
    for g in grads:
        as_list, state_l = opt.step(as_list, [g[k] for k in keys], state_l)

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
    for g in make_grads(start, 3, seed=4):
        grads = g if container == "dict" else list(g.values())
        new_params, new_state = opt.step(params, grads, state)
        assert new_params is params
        for k, arr in originals.items():
            assert new_params[k] is arr
        new_arrays = state_arrays(new_state)
        assert set(new_arrays) == set(arrays)
        for key, arr in arrays.items():
            assert new_arrays[key] is arr, key
        params, state = new_params, new_state
    assert state.step == 3
    for k, arr in originals.items():
        assert not np.array_equal(arr, snapshot[k])  # the caller's arrays changed


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
    for g in make_grads(params, 3, seed=6):
        params, state = opt.step(params, g, state)
    for v in params.values():
        assert v.dtype == np.float32
    for key, arr in state_arrays(state).items():
        assert arr.dtype == np.float32, key
        assert arr.shape == (() if state_scopes(rule).get(key[0]) == "tensor" else params[key[1]].shape), key


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
    for g in grads:
        params, state = opt.step(params, g, state)
    assert seen == [0, 1, 2, 3]

    # the same as a float learning rate of schedule(step) at each step, state carried over
    manual = make_params(seed=7)
    state = optimizer(rule, **others).init(manual)
    for k, g in enumerate(grads):
        manual, state = optimizer(rule, learning_rate=0.02 / (1 + k), **others).step(manual, g, state)
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
        opt.step(params, grads, state)
    msg = str(info.value)
    assert "'w1'" in msg and "(3, 4)" in msg and "(4, 3)" in msg

    as_list = list(params.values())
    state = opt.init(as_list)
    glist = [np.ones(v.shape) for v in as_list]
    glist[1] = np.ones((5,))
    with pytest.raises(ValueError) as info:
        opt.step(as_list, glist, state)
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
        opt.step(params, grads, state)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_wrong_number_of_grads(rule):
    opt = optimizer(rule)
    params = list(make_params(seed=13).values())
    state = opt.init(params)
    grads = [np.ones(p.shape) for p in params]
    with pytest.raises(ValueError):
        opt.step(params, grads[:-1], state)
    with pytest.raises(ValueError):
        opt.step(params, grads + [np.ones(3)], state)
    dparams = make_params(seed=13)
    dstate = opt.init(dparams)
    dgrads = {k: np.ones(v.shape) for k, v in dparams.items()}
    del dgrads["s"]
    with pytest.raises(ValueError):
        opt.step(dparams, dgrads, dstate)


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
        opt.step(np.zeros(3), [np.ones(3)], state)


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
        opt.step(params, [np.arange(3)], state)


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
    assert getattr(optimizer(rule), name) is None
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
    for _ in range(4):
        g = rng.standard_normal()
        grads = {
            "scalar": np.array(g),
            "empty": np.zeros((0,)),
            "empty2": np.zeros((3, 0)),
            "one": np.array([g]),
        }
        params, state = opt.step(params, grads, state)
    for k, v in ids.items():
        assert params[k] is v
    assert params["scalar"].shape == () and params["empty"].shape == (0,) and params["empty2"].shape == (3, 0)
    for key, arr in state_arrays(state).items():
        assert arr.shape == (() if state_scopes(rule).get(key[0]) == "tensor" else params[key[1]].shape), key
    # a rank-0 array is optimized like a one-element array
    assert np.isfinite(params["scalar"]) and params["scalar"] != 0.7
    np.testing.assert_array_equal(params["scalar"], params["one"][0])


# --------------------------------------------------------------------------------------
# 5. Keras's shared options


def run_steps(rule, start: dict, grads: list[dict], **kwargs):
    """``(opt, params, state)`` after a step per gradient, from a copy of ``start``."""
    params = {k: v.copy() for k, v in start.items()}
    opt = optimizer(rule, **kwargs)
    state = opt.init(params)
    for g in grads:
        params, state = opt.step(params, g, state)
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
    # given a value that is not 0, the option acts (otherwise the checks above prove nothing)
    _, on, _ = run_steps(rule, start, grads, **base, **{name: inside(h)})
    assert any(not np.array_equal(on[k], off[1][k]) for k in on)


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
        params, state = opt.step(params, g, state)
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
    for lr, g in zip(values, grads):
        manual, state = optimizer(rule, learning_rate=lr, **others).step(manual, g, state)
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
        params, state = opt.step(params, g, state)
        assert state.step == k + 1  # the step counter counts calls
        changed = any(not np.array_equal(params[key], before[key]) for key in params)
        assert changed == ((k + 1) % n_acc == 0), k
    # the same as one step per n_acc calls, with the mean of their gradients
    means = [
        {key: np.asarray(sum(g[key] for g in grads[j : j + n_acc]) / n_acc) for key in start}
        for j in range(0, len(grads), n_acc)
    ]
    _, reference, _ = run_steps(rule, start, means)
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
