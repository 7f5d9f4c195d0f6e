"""Checkpoints and bad input at run time, in every backend, on the rules that show every feature a rule
may have (``cases.MACHINERY``; ``OPTFORGE_TEST_ALL_RULES=1``: every rule of the registry).

1. A checkpoint taken after k steps and resumed in a fresh optimizer gives, bit for bit, the parameters
   and state of an uninterrupted run: JAX (the state pytree's leaves through numpy.savez), NumPy (the
   state's fields through numpy.savez) and torch (state_dict through torch.save / torch.load).
2. A state of another rule or of another parameter layout is an error, not a silent mismatch.
3. Bad input fails with a clear message (type and text); zero-size tensors work.

Tests marked ``xfail(strict=True, reason="BUG (open): ...")`` pin down what is still wrong.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from cases import MACHINERY
from cases import RULES as REGISTRY
from drivers import varying_lr
from hyper_cases import state_shape

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optforge.generated.jax as gen_jax  # noqa: E402
import optforge.generated.numpy as gen_np  # noqa: E402
import optforge.generated.torch as gen_torch  # noqa: E402

RULES = MACHINERY  # what every rule shares: on the rules that show every feature (tests/cases.py)
RULE_IDS = [r.name for r in RULES]
BY_NAME = dict(REGISTRY)

STEPS = 7
KS = (0, 1, 2, 5)  # checkpoints: before the first step, after one call (mid-accumulation with N = 2), ...
CLIPPING = {"clipnorm": 1.0, "clipvalue": 0.5, "global_clipnorm": 2.0}  # Keras: at most one


# --------------------------------------------------------------------------------------
# configurations


def required(rule) -> dict:
    """The arguments a rule cannot do without: optax's NovoGrad has no default learning rate."""
    return {"learning_rate": 0.01} if rule.hypers["learning_rate"].default is None else {}


def default_config(rule) -> dict:
    return required(rule)


def every_option(rule) -> dict:
    """Every kind of state at once: the rule's own non-default values (from its named configurations, its
    epsilon-0 ones left out), EMA with overwrite, gradient accumulation (N = 2), loss scaling, one
    clipping option (rotating over the rules) and Keras's weight decay where the rule has no own."""
    out = {}
    for cfg in rule.configs.values():
        out.update({k: v for k, v in cfg.items() if v != 0})
    clip = list(CLIPPING)[RULE_IDS.index(rule.name) % len(CLIPPING)]
    out.update(
        use_ema=True,
        ema_momentum=0.9,
        ema_overwrite_frequency=3,
        gradient_accumulation_steps=2,
        loss_scale_factor=4.0,
        **{clip: CLIPPING[clip]},
    )
    if rule.hypers["weight_decay"].default is None:  # Keras's decoupled option (not NovoGrad's own)
        out["weight_decay"] = 0.01
    return {**required(rule), **out}


def with_schedule(rule) -> dict:
    """A learning rate that changes every step: resuming must continue it at the right step."""
    cfg = every_option(rule)
    return {**cfg, "learning_rate": varying_lr(cfg["learning_rate"] if "learning_rate" in cfg else 0.01)}


CONFIGS = {"default": default_config, "every_option": every_option, "schedule": with_schedule}


def torch_kwargs(kwargs: dict) -> dict:
    return {("lr" if k == "learning_rate" else k): v for k, v in kwargs.items()}


# --------------------------------------------------------------------------------------
# problems

SHAPES = {"kernel": (3, 4), "bias": (4,), "scale": (), "empty": (2, 0), "cube": (2, 2, 3)}


def arrays(seed: int, dtype, shapes=SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: np.asarray(rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def grad_arrays(steps: int, dtype, seed: int = 1, shapes=SHAPES) -> list[dict[str, np.ndarray]]:
    return [arrays(seed * 1000 + i, dtype, shapes) for i in range(steps)]


# --------------------------------------------------------------------------------------
# NumPy: the state's fields (lists/dicts of arrays, None, ints, floats) through numpy.savez


def numpy_save(**containers) -> bytes:
    """Every field of every NamedTuple state or container of arrays, as named arrays in one .npz."""
    named = {}
    for prefix, value in containers.items():
        fields = value._asdict() if hasattr(value, "_asdict") else {"": value}
        for field, v in fields.items():
            key = f"{prefix}|{field}"
            if v is None:
                named[f"{key}|none"] = np.zeros(0)
            elif isinstance(v, bool):
                raise AssertionError(f"{key}: a bool in the state")
            elif isinstance(v, int):
                named[f"{key}|int"] = np.asarray(v)
            elif isinstance(v, float):
                named[f"{key}|float"] = np.asarray(v)
            elif isinstance(v, list):
                named.update({f"{key}|list|{i}": a for i, a in enumerate(v)})
                if not v:
                    named[f"{key}|list"] = np.zeros(0)
            elif isinstance(v, dict):
                named.update({f"{key}|dict|{k}": a for k, a in v.items()})
            else:
                raise AssertionError(
                    f"{key}: a {type(v).__name__} in the state (expected list/dict/None/int/float)"
                )
            for a in v.values() if isinstance(v, dict) else v if isinstance(v, list) else []:
                assert isinstance(a, np.ndarray), f"{key}: a {type(a).__name__} in a per-parameter entry"
    buf = io.BytesIO()
    np.savez(buf, **named)
    return buf.getvalue()


def numpy_load(blob: bytes) -> dict[str, dict]:
    """{prefix: {field: value}} as numpy_save wrote it (ints and floats back as Python numbers)."""
    out: dict[str, dict] = {}
    with np.load(io.BytesIO(blob)) as data:
        for name in data.files:
            prefix, field, kind, *key = name.split("|")
            fields = out.setdefault(prefix, {})
            a = data[name]
            if kind == "none":
                fields[field] = None
            elif kind == "int":
                fields[field] = int(a)
            elif kind == "float":
                fields[field] = float(a)
            elif kind == "list":
                fields.setdefault(field, [])
                if key:
                    assert int(key[0]) == len(fields[field])
                    fields[field].append(a)
            else:
                fields.setdefault(field, {})[key[0]] = a
    return out


def numpy_run(opt, params, grads, state):
    for g in grads:
        params, state = opt.step(params, g, state)
    return params, state


def as_container(d: dict, container: str):
    return {k: v.copy() for k, v in d.items()} if container == "dict" else [v.copy() for v in d.values()]


def assert_numpy_equal(got, want, what: str) -> None:
    if isinstance(want, dict):
        assert list(got) == list(want), what
        got, want = list(got.values()), list(want.values())
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what}[{i}]: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        )
        assert np.array_equal(a, b), f"{what}[{i}]: max difference {np.max(np.abs(a - b))}"


def assert_numpy_states_equal(got, want) -> None:
    assert type(got) is type(want)
    for field, b in want._asdict().items():
        a = getattr(got, field)
        if b is None or isinstance(b, (int, float)):
            assert a == b and type(a) is type(b), f"state.{field}: {a!r} vs {b!r}"
        else:
            assert_numpy_equal(a, b, f"state.{field}")


def numpy_resume_check(rule, kwargs, dtype, container):
    cls = getattr(gen_np, rule.name)
    start, grads = arrays(0, dtype), grad_arrays(STEPS, dtype)
    grads = [as_container(g, container) for g in grads]
    opt = cls(**kwargs)
    params = as_container(start, container)
    straight_params, straight_state = numpy_run(opt, params, grads, opt.init(params))
    for k in KS:
        opt = cls(**kwargs)
        params = as_container(start, container)
        params, state = numpy_run(opt, params, grads[:k], opt.init(params))
        blob = numpy_save(params=params, state=state)
        state_class = type(state)
        del opt, params, state

        loaded = numpy_load(blob)
        params = loaded["params"][""]
        opt = cls(**kwargs)  # a fresh optimizer: everything it continues from comes from the file
        state = state_class(**loaded["state"])
        params, state = numpy_run(opt, params, grads[k:], state)
        assert_numpy_equal(params, straight_params, f"params resumed after {k} steps")
        assert_numpy_states_equal(state, straight_state)


@pytest.mark.parametrize("container", ["list", "dict"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_checkpoint_resumes_bitwise(rule, config, container):
    numpy_resume_check(rule, CONFIGS[config](rule), np.float64, container)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_checkpoint_resumes_bitwise_in_lower_precision(rule, dtype):
    numpy_resume_check(rule, every_option(rule), dtype, "dict")
    # the precision policy survives the round trip: float16 parameters keep float32 state
    opt = getattr(gen_np, rule.name)(**every_option(rule))
    params = arrays(0, dtype)
    state = opt.init(params)
    state = type(state)(**numpy_load(numpy_save(state=state))["state"])
    for field, slot in state._asdict().items():
        if isinstance(slot, dict):
            assert {a.dtype for a in slot.values()} == {np.dtype(np.float32)}, field


# --------------------------------------------------------------------------------------
# JAX: flatten the state pytree, numpy.savez its leaves, load, unflatten with the same treedef


def jax_tree(d: dict):
    """A nested pytree over SHAPES' arrays (dicts, a list, a 0-d leaf, a size-0 leaf)."""
    return {
        "dense": {"kernel": jnp.asarray(d["kernel"]), "bias": jnp.asarray(d["bias"])},
        "scale": jnp.asarray(d["scale"]),
        "stack": [jnp.asarray(d["cube"]), jnp.asarray(d["empty"])],
    }


def jax_save(tree) -> tuple[bytes, object]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(leaf) for leaf in leaves])
    return buf.getvalue(), treedef


def jax_load(blob: bytes, treedef):
    with np.load(io.BytesIO(blob)) as data:
        leaves = [jnp.asarray(data[f"arr_{i}"]) for i in range(len(data.files))]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def jax_run(update, params, grads, state):
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def assert_trees_bitwise(got, want, what: str) -> None:
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), what
    for i, (a, b) in enumerate(zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what} leaf {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        )
        assert np.array_equal(a, b), f"{what} leaf {i}: max difference {np.max(np.abs(a.astype(float) - b))}"


def jax_resume_check(rule, kwargs, dtype, save_params=True, jit=False, ks=KS):
    """An uninterrupted run, saving the parameters and state after each k of ``ks`` steps; each checkpoint
    then resumed by a fresh transformation (and a fresh jit) must end bit for bit where the run did."""
    factory = getattr(gen_jax, rule.module)
    start = jax_tree(arrays(0, dtype))
    grads = [jax_tree(g) for g in grad_arrays(STEPS, dtype)]

    def compiled(tx):
        return jax.jit(tx.update) if jit else tx.update

    tx = factory(**kwargs)
    update = compiled(tx)
    params, state = start, tx.init(start)
    saved = {}
    for k in range(STEPS + 1):
        if k in ks:
            saved[k] = jax_save(state), jax_save(params) if save_params else params  # else: in memory
        if k < STEPS:
            params, state = jax_run(update, params, grads[k : k + 1], state)
    straight_params, straight_state = params, state
    del tx, update, state
    for k, (state_saved, params_saved) in saved.items():
        tx = factory(**kwargs)  # a fresh transformation (and a fresh jit)
        state = jax_load(*state_saved)
        params = jax_load(*params_saved) if save_params else params_saved
        params, state = jax_run(compiled(tx), params, grads[k:], state)
        assert_trees_bitwise(params, straight_params, f"params resumed after {k} steps")
        assert_trees_bitwise(state, straight_state, f"state resumed after {k} steps")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_checkpoint_resumes_bitwise(rule, config):
    jax_resume_check(rule, CONFIGS[config](rule), np.float64)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_checkpoint_resumes_bitwise_under_jit(rule):
    # a restored leaf is a plain (not weakly typed) array: the same compiled update must come out; float32
    # with every option under jit (eager float32: the bfloat16 test's float32 state; eager float64: above)
    jax_resume_check(rule, with_schedule(rule), np.float64, jit=True, ks=(5,))
    jax_resume_check(rule, every_option(rule), np.float32, jit=True, ks=(1,))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_checkpoint_with_bfloat16_params_keeps_float32_state(rule):
    # NumPy's .npz cannot hold bfloat16 (it comes back as void '|V2'): the parameters stay in memory here,
    # the state (float32 by the precision policy, int32 count) goes through the file
    import ml_dtypes

    jax_resume_check(rule, every_option(rule), ml_dtypes.bfloat16, save_params=False)
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    start = jax_tree(arrays(0, ml_dtypes.bfloat16))
    state = jax_load(*jax_save(tx.init(start)))
    for field in ("ema", "grad_accumulator"):
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(getattr(state, field))} == {
            np.dtype(np.float32)
        }


# --------------------------------------------------------------------------------------
# torch: state_dict -> torch.save -> torch.load -> load_state_dict into a fresh optimizer on a fresh model


class Model(torch.nn.Module):
    def __init__(self, seed: int, dtype, shapes=SHAPES):
        super().__init__()
        for name, a in arrays(seed, np.float64, shapes).items():
            self.register_parameter(name, torch.nn.Parameter(torch.tensor(a, dtype=dtype)))


def torch_grads(dtype, steps=STEPS, shapes=SHAPES) -> list[list]:
    return [
        [torch.tensor(a, dtype=dtype) for a in g.values()] for g in grad_arrays(steps, np.float64, 1, shapes)
    ]


def torch_run(model, opt, grads) -> None:
    for g in grads:
        for p, x in zip(model.parameters(), g):
            p.grad = x.clone()
        opt.step()


def torch_resume(rule, kwargs, dtype, k, grads):
    """The model and optimizer after k steps, a checkpoint through bytes, and the rest of the steps in a
    fresh model (other initial values) with a fresh optimizer."""
    cls = getattr(gen_torch, rule.name)
    first = Model(0, dtype)
    opt = cls(first.parameters(), **kwargs)
    torch_run(first, opt, grads[:k])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buf)
    del first, opt
    buf.seek(0)
    checkpoint = torch.load(buf)
    model = Model(99, dtype)
    model.load_state_dict(checkpoint["model"])
    opt = cls(model.parameters(), **kwargs)
    opt.load_state_dict(checkpoint["optimizer"])
    return model, opt


def assert_torch_bitwise(model, opt, straight, opt_straight, what: str) -> list[str]:
    problems = []
    for (name, a), b in zip(model.named_parameters(), straight.parameters()):
        if a.dtype != b.dtype or not torch.equal(a.detach(), b.detach()):
            problems.append(f"{what}: parameter {name} differs")
    for p_a, p_b in zip(model.parameters(), straight.parameters()):
        s_a, s_b = opt.state[p_a], opt_straight.state[p_b]
        if set(s_a) != set(s_b):
            problems.append(f"{what}: state keys {sorted(s_a)} vs {sorted(s_b)}")
            continue
        for key in s_b:
            a, b = s_a[key], s_b[key]
            if isinstance(b, torch.Tensor):
                if a.dtype != b.dtype or not torch.equal(a, b):
                    problems.append(f"{what}: state {key} differs ({a.dtype} vs {b.dtype})")
            elif a != b:
                problems.append(f"{what}: state {key}: {a!r} vs {b!r}")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    groups_straight = [{k: v for k, v in g.items() if k != "params"} for g in opt_straight.param_groups]
    if groups != groups_straight:
        problems.append(f"{what}: param groups {groups} vs {groups_straight}")
    return problems


def torch_resume_problems(rule, kwargs, dtype) -> list[str]:
    cls = getattr(gen_torch, rule.name)
    grads = torch_grads(dtype)
    straight = Model(0, dtype)
    opt_straight = cls(straight.parameters(), **kwargs)
    torch_run(straight, opt_straight, grads)
    problems = []
    for k in KS:
        model, opt = torch_resume(rule, kwargs, dtype, k, grads)
        torch_run(model, opt, grads[k:])
        problems += assert_torch_bitwise(model, opt, straight, opt_straight, f"resumed after {k} steps")
    return problems


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", ["default", "every_option"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_checkpoint_resumes_bitwise(rule, config, dtype):
    problems = torch_resume_problems(rule, torch_kwargs(CONFIGS[config](rule)), dtype)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_checkpoint_with_half_params_keeps_float32_state(rule, dtype):
    kwargs = torch_kwargs(every_option(rule))
    grads = torch_grads(dtype)
    for k in (1, 5):
        model, opt = torch_resume(rule, kwargs, dtype, k, grads)
        for p in model.parameters():
            assert p.dtype == dtype
            state = opt.state[p]
            assert state, "no state after loading"
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == torch.float32, (key, value.dtype)
        torch_run(model, opt, grads[k:])
        for p in model.parameters():
            assert p.dtype == dtype
            assert all(v.dtype == torch.float32 for v in opt.state[p].values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_checkpoint_with_half_params_resumes_bitwise(rule, dtype):
    problems = torch_resume_problems(rule, torch_kwargs(every_option(rule)), dtype)
    assert not problems, "\n".join(problems)


def test_torch_checkpoint_keeps_a_chosen_float64_state_dtype_bitwise():
    rule = BY_NAME["Nadam"]
    kwargs = {**torch_kwargs(every_option(rule)), "state_dtype": torch.float64}
    problems = torch_resume_problems(rule, kwargs, torch.float32)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# 2. a state of another rule or of another parameter layout

SMALL = {"a": (3,), "b": (2, 2)}


def other_rules(rule):
    return [r for r in RULES if r is not rule]


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_state_of_another_rule_raises_naming_the_expected_state(rule):
    params = arrays(0, np.float64, SMALL)
    opt = getattr(gen_np, rule.name)(**every_option(rule))
    expected = type(opt.init(params)).__name__
    for other in other_rules(rule):
        state = getattr(gen_np, other.name)(**every_option(other)).init(params)
        with pytest.raises(
            TypeError, match=rf"expected an instance of {expected} .*Received: {type(state).__name__}"
        ):
            opt.step(params, arrays(1, np.float64, SMALL), state)
    with pytest.raises(TypeError, match=rf"expected an instance of {expected}"):
        opt.step(params, arrays(1, np.float64, SMALL), tuple(opt.init(params)))  # a plain tuple of the fields


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_state_for_other_params_raises(rule):
    opt = getattr(gen_np, rule.name)(**every_option(rule))
    params = arrays(0, np.float64, SMALL)
    grads = arrays(1, np.float64, SMALL)
    # another shape: the message names the entry, the expected and the received shape
    state = opt.init({"a": np.zeros(4), "b": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"state\.\w+\['a'\] must have shape \(3,\).*Received: \(4,\)"):
        opt.step(params, grads, state)
    # another number of tensors
    state = opt.init({"a": np.zeros(3)})
    with pytest.raises(
        ValueError, match=r"does not match params: expected keys \['a', 'b'\], received \['a'\]"
    ):
        opt.step(params, grads, state)
    # other keys
    state = opt.init({"a": np.zeros(3), "c": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"does not match params"):
        opt.step(params, grads, state)
    # a state built for a list, used with a dict of the same arrays
    state = opt.init(list(arrays(0, np.float64, SMALL).values()))
    with pytest.raises(ValueError, match=r"does not match params"):
        opt.step(params, grads, state)


@pytest.mark.parametrize("missing", ["use_ema", "gradient_accumulation_steps"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_state_of_another_configuration_raises_naming_the_state(rule, missing):
    kwargs = every_option(rule)
    params = arrays(0, np.float64, SMALL)
    state = getattr(gen_np, rule.name)(**{k: v for k, v in kwargs.items() if k != missing}).init(params)
    opt = getattr(gen_np, rule.name)(**kwargs)
    name = "ema" if missing == "use_ema" else "grad_accumulator"
    with pytest.raises((TypeError, ValueError), match=name):
        for _ in range(2):
            opt.step(params, arrays(1, np.float64, SMALL), state)


def jax_small(seed=0):
    return {k: jnp.asarray(v) for k, v in arrays(seed, np.float64, SMALL).items()}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_state_for_another_pytree_structure_raises(rule, jit):
    factory = getattr(gen_jax, rule.module)
    tx = factory(**every_option(rule))
    update = jax.jit(tx.update) if jit else tx.update
    params, grads = jax_small(0), jax_small(1)
    others = {  # what the state was built for
        "list": [params["a"], params["b"]],
        "fewer": {"a": params["a"]},
        "more": {**params, "c": params["a"]},
        "renamed": {"a": params["a"], "c": params["b"]},
        "deeper": {"a": params["a"], "b": {"inner": params["b"]}},
    }
    for what, other in others.items():
        state = tx.init(other)
        with pytest.raises((ValueError, TypeError), match=r"state\.\w+ has the pytree .* a state made for"):
            update(grads, state, params)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_state_for_a_deeper_pytree_names_the_mismatch(rule):
    # flattened only up to the gradients' structure, this state once failed deep in the update with
    # "unsupported operand type(s) for +: 'ArrayImpl' and 'dict'"
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    params, grads = jax_small(0), jax_small(1)
    state = tx.init({"a": params["a"], "b": {"inner": params["b"]}})
    with pytest.raises((ValueError, TypeError), match="state|structure"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_state_for_other_shapes_that_do_not_broadcast_raises(rule):
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    params, grads = jax_small(0), jax_small(1)
    state = tx.init({"a": jnp.zeros(4), "b": jnp.zeros((2, 2))})
    with pytest.raises((TypeError, ValueError), match=r"\(3,\).*\(4,\)|\(4,\).*\(3,\)"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("small", [(), (1,)], ids=["0d", "1"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_state_for_other_shapes_that_broadcast_raises(rule, small):
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    params, grads = jax_small(0), jax_small(1)
    state = tx.init({"a": jnp.zeros(small), "b": jnp.zeros((2, 2))})
    with pytest.raises((TypeError, ValueError), match="shape"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_state_of_another_rule_raises_naming_the_expected_state(rule, jit):
    params, grads = jax_small(0), jax_small(1)
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    update = jax.jit(tx.update) if jit else tx.update
    expected = type(tx.init(params)).__name__
    for other in other_rules(rule):
        state = getattr(gen_jax, other.module)(**every_option(other)).init(params)
        with pytest.raises(
            TypeError, match=rf"expected an instance of {expected} .*Received: {type(state).__name__}"
        ):
            update(grads, state, params)


def torch_state_dict_of(rule, shapes=SMALL, steps=2):
    model = Model(0, torch.float64, shapes)
    opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
    torch_run(model, opt, torch_grads(torch.float64, steps, shapes))
    return opt.state_dict()


TORCH_PAIRS = [
    pytest.param(rule, other, id=f"{rule.name}<-{other.name}")
    for rule in RULES
    for other in other_rules(rule)
]


@pytest.mark.parametrize(("rule", "other"), TORCH_PAIRS)
def test_torch_load_state_dict_of_another_rule_raises(rule, other):
    # every pair: a rule whose per-parameter state names are a subset of this one's (NovoGradTF1's m into
    # Adamax, Nadam or NovoGrad) was once loaded silently
    model = Model(0, torch.float64, SMALL)
    opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
    with pytest.raises(ValueError, match=rf"\b{rule.name}\b"):
        opt.load_state_dict(torch_state_dict_of(other))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_load_state_dict_of_another_rule_before_its_first_step_raises(rule):
    for other in other_rules(rule):
        model = Model(0, torch.float64, SMALL)
        opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
        with pytest.raises(ValueError, match=rf"\b{rule.name}\b"):
            opt.load_state_dict(torch_state_dict_of(other, steps=0))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_load_state_dict_of_another_number_of_params_raises(rule):
    for shapes in ({"a": (3,)}, {**SMALL, "c": (2,)}):
        model = Model(0, torch.float64, SMALL)
        opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
        with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
            opt.load_state_dict(torch_state_dict_of(rule, shapes))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_state_dict_for_other_shapes_fails_by_the_first_step(rule):
    # torch.optim.Optimizer checks only the number of parameters when loading; a state for other shapes
    # (even one that would broadcast) fails at the first step, on the in-place update of the state
    for shapes in ({"a": (4,), "b": (2, 2)}, {"a": (1,), "b": (2, 2)}):
        model = Model(0, torch.float64, SMALL)
        opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
        with pytest.raises((RuntimeError, ValueError), match="shape|size"):
            opt.load_state_dict(torch_state_dict_of(rule, shapes))
            torch_run(model, opt, torch_grads(torch.float64, 2, SMALL))


# --------------------------------------------------------------------------------------
# 3. bad input


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_numpy_gradient_shape_dtype_and_count_mismatch(rule):
    opt = getattr(gen_np, rule.name)(**every_option(rule))
    params = arrays(0, np.float64, SMALL)
    state = opt.init(params)
    grads = arrays(1, np.float64, SMALL)
    with pytest.raises(
        ValueError,
        match=r"grads\['a'\] must have the shape and dtype of params\['a'\]: "
        r"expected \(3,\) float64, received \(4,\) float64",
    ):
        opt.step(params, {**grads, "a": np.ones(4)}, state)
    with pytest.raises(ValueError, match=r"grads\['a'\].*expected \(3,\) float64, received \(\) float64"):
        opt.step(params, {**grads, "a": np.ones(())}, state)  # would broadcast: still refused
    with pytest.raises(ValueError, match=r"expected \(3,\) float64, received \(3,\) float32"):
        opt.step(params, {**grads, "a": grads["a"].astype(np.float32)}, state)
    with pytest.raises(
        ValueError, match=r"grads must match params: expected keys \['a', 'b'\], received \['a'\]"
    ):
        opt.step(params, {"a": grads["a"]}, state)
    lparams = list(arrays(0, np.float64, SMALL).values())
    lstate = opt.init(lparams)
    with pytest.raises(ValueError, match=r"grads must match params: expected keys \[0, 1\], received \[0\]"):
        opt.step(lparams, [np.ones(3)], lstate)
    with pytest.raises(ValueError, match=r"grads must match params"):
        opt.step(lparams, [np.ones(3), np.ones((2, 2)), np.ones(2)], lstate)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_gradient_structure_and_shape_mismatch(rule):
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    params, grads = jax_small(0), jax_small(1)
    state = tx.init(params)
    structure = "pytree|structure|mismatch|Expected"  # optforge's message, or JAX's own
    with pytest.raises(ValueError, match=structure):
        tx.update({"a": grads["a"]}, state, params)  # fewer grads than params
    with pytest.raises(ValueError, match=structure):
        tx.update({**grads, "c": grads["a"]}, state, params)  # more
    with pytest.raises((TypeError, ValueError), match=r"\(4,\).*\(3,\)|\(3,\).*\(4,\)"):
        tx.update({**grads, "a": jnp.ones(4)}, state, params)


@pytest.mark.parametrize("small", [(), (1,)], ids=["0d", "1"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_gradient_that_broadcasts_raises(rule, small):
    tx = getattr(gen_jax, rule.module)(**every_option(rule))
    params, grads = jax_small(0), jax_small(1)
    state = tx.init(params)
    with pytest.raises((TypeError, ValueError), match="shape"):
        tx.update({**grads, "a": jnp.ones(small)}, state, params)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_gradients_of_another_float_dtype_are_accepted(rule):
    # documented behaviour, as in optax: float32 gradients of float64 parameters (and the reverse) are
    # taken; the parameters and the state keep their dtypes, and the result is the float64 one to float32
    # precision
    tx = getattr(gen_jax, rule.module)(**required(rule))
    params = jax_small(0)
    state = tx.init(params)
    grads32 = {k: v.astype(jnp.float32) for k, v in jax_small(1).items()}
    updates, new_state = tx.update(grads32, state, params)
    new_params = optax.apply_updates(params, updates)
    reference_updates, _ = tx.update({k: v.astype(jnp.float64) for k, v in grads32.items()}, state, params)
    reference = optax.apply_updates(params, reference_updates)
    for k in params:
        assert new_params[k].dtype == jnp.float64
        np.testing.assert_allclose(new_params[k], reference[k], rtol=1e-6, atol=1e-9)
    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
        assert a.dtype == b.dtype


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_gradient_shape_and_dtype_mismatch(rule):
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = getattr(gen_torch, rule.name)([w], **torch_kwargs(every_option(rule)))
    # torch itself refuses such a .grad
    with pytest.raises(RuntimeError, match="size"):
        w.grad = torch.ones(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dtype"):
        w.grad = torch.ones(3, dtype=torch.float32)
    # one set behind autograd's back is caught by the optimizer
    w.grad = torch.ones(3, dtype=torch.float64)
    w.grad.data = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"the gradient of a parameter of shape \(3,\) has shape \(4,\)"):
        opt.step()


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_parameters_without_gradients_are_skipped(rule):
    # torch has no "number of grads": a parameter whose .grad is None is left alone, as in torch.optim
    model = Model(0, torch.float64, SMALL)
    opt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(every_option(rule)))
    a, b = model.parameters()
    before = b.detach().clone()
    for _ in range(4):
        a.grad = torch.ones_like(a)
        opt.step()
    assert b.grad is None and torch.equal(b.detach(), before) and not opt.state.get(b)
    assert not torch.equal(a.detach(), torch.tensor(arrays(0, np.float64, SMALL)["a"]))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_empty_parameter_list(rule):
    kwargs = required(rule)
    for empty in ([], {}):
        with pytest.raises(ValueError, match="params is empty: expected at least one array"):
            getattr(gen_np, rule.name)(**kwargs).init(empty)
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        getattr(gen_torch, rule.name)([], **torch_kwargs(kwargs))
    # JAX, as optax: an empty pytree is a valid (if useless) set of parameters
    tx = getattr(gen_jax, rule.module)(**kwargs)
    for empty in ([], {}):
        state = tx.init(empty)
        updates, state = tx.update(empty, state, empty)
        assert updates == empty


ZERO_SIZE = {"empty": (0,), "flat": (2, 0, 3), "kernel": (3, 2), "scale": ()}


@pytest.mark.parametrize("config", ["default", "every_option"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_zero_size_tensors_work_in_every_backend(rule, config):
    kwargs = CONFIGS[config](rule)
    start, grads = arrays(0, np.float64, ZERO_SIZE), grad_arrays(4, np.float64, 1, ZERO_SIZE)
    opt = getattr(gen_np, rule.name)(**kwargs)
    params = as_container(start, "dict")
    params, state = numpy_run(opt, params, grads, opt.init(params))

    tx = getattr(gen_jax, rule.module)(**kwargs)
    jparams = {k: jnp.asarray(v) for k, v in start.items()}
    jparams, _ = jax_run(
        jax.jit(tx.update),
        jparams,
        [{k: jnp.asarray(v) for k, v in g.items()} for g in grads],
        tx.init(jparams),
    )

    model = Model(0, torch.float64, ZERO_SIZE)
    topt = getattr(gen_torch, rule.name)(model.parameters(), **torch_kwargs(kwargs))
    torch_run(model, topt, torch_grads(torch.float64, 4, ZERO_SIZE))
    tparams = dict(model.named_parameters())

    for k, shape in ZERO_SIZE.items():
        got = [params[k], np.asarray(jparams[k]), tparams[k].detach().numpy()]
        for a in got:
            assert a.shape == shape and np.all(np.isfinite(a))
        np.testing.assert_allclose(got[1], got[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(got[2], got[0], rtol=1e-12, atol=0)
    for field, slot in state._asdict().items():
        if isinstance(slot, dict):
            assert slot["empty"].shape == state_shape(rule, field, ZERO_SIZE["empty"], kwargs), field
            assert all(np.all(np.isfinite(a)) for a in slot.values()), field


# hyperparameters out of range or of the wrong type, in every backend


def out_of_range(h) -> list:
    iv = h.interval
    if h.kind == "int":
        values = [math.ceil(iv.low) - 1] if math.isfinite(iv.low) else []
        return [v for v in values if not (h.zero_is_off and v == 0)]
    values = [math.nan, iv.low - 1.0]
    values.append(iv.high + 1.0 if math.isfinite(iv.high) else math.inf)
    if not iv.high_closed and math.isfinite(iv.high):
        values.append(float(iv.high))
    if not iv.low_closed:
        values.append(float(iv.low))
    return values


def wrong_types(h) -> list:
    if h.kind == "bool":
        return [1, "yes", None]
    if h.kind == "choice":
        return [1, True] + ([] if None in h.choices else [None])
    values = ["0.1", [0.1], True]
    if h.kind == "int":
        values.append(2.0)
    return values


def construct(backend: str, rule, kwargs: dict):
    if backend == "numpy":
        return getattr(gen_np, rule.name)(**kwargs)
    if backend == "jax":
        return getattr(gen_jax, rule.module)(**kwargs)
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    return getattr(gen_torch, rule.name)([w], **torch_kwargs(kwargs))


BACKENDS = ("numpy", "jax", "torch")


def gen_torch_class(rule):
    return getattr(gen_torch, rule.name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_hyperparameter_out_of_range_or_of_wrong_type(rule, backend):
    for name, h in rule.hypers.items():
        shown = "lr" if (backend == "torch" and name == "learning_rate") else name
        if backend == "torch" and name in gen_torch_class(rule).torch_names:  # beta_1 is betas[0]
            key, index = gen_torch_class(rule).torch_names[name]
            shown = re.escape(key if index is None else f"{key}[{index}]")
        if h.kind == "choice":
            with pytest.raises(ValueError, match=rf"`{shown}` must be one of .*Received: {shown}='nope'"):
                construct(backend, rule, {**required(rule), name: "nope"})
        elif h.kind != "bool":
            for value in out_of_range(h):
                with pytest.raises(ValueError, match=rf"`{shown}` must be in [\[(].*Received: {shown}="):
                    construct(backend, rule, {**required(rule), name: value})
        for value in wrong_types(h):
            with pytest.raises(TypeError, match=rf"`{shown}` must be .*Received: {shown}="):
                construct(backend, rule, {**required(rule), name: value})


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf], ids=["negative", "nan", "inf"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_jax_concrete_array_learning_rate_out_of_range_raises(rule, value):
    with pytest.raises(ValueError, match="`learning_rate` must be in"):
        getattr(gen_jax, rule.module)(learning_rate=jnp.asarray(value))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_param_group_hyperparameter_out_of_range_raises(rule):
    """A parameter group's own values are checked as the constructor's are (torch.optim's own optimizers
    do not check them), under the rule's name or torch's."""
    name, h = next((n, h) for n, h in rule.hypers.items() if h.kind == "float" and h.default is not None)
    key, index = gen_torch_class(rule).torch_names.get(name, (name, None))
    shown = re.escape(key if index is None else f"{key}[{index}]")
    for bad in (out_of_range(h)[1], "0.1"):
        w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        with pytest.raises((ValueError, TypeError), match=f"`{shown}` must be"):
            getattr(gen_torch, rule.name)([{"params": [w], name: bad}], **torch_kwargs(required(rule)))
        opt = getattr(gen_torch, rule.name)([w], **torch_kwargs(required(rule)))
        with pytest.raises((ValueError, TypeError), match=f"`{shown}` must be"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], name: bad})
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="`lr` must be in"):
        getattr(gen_torch, rule.name)([{"params": [w], "lr": -1.0}], **torch_kwargs(required(rule)))


# a schedule that returns a non-scalar


def vector_schedule(step):
    return np.array([0.1, 0.2])


def one_element_schedule(step):
    return np.array([0.1])


def schedule_step(backend: str, rule, shape, schedule=vector_schedule):
    """One step with the learning rate ``schedule``; the new parameter."""
    kwargs = {**required(rule), "learning_rate": schedule}
    if backend == "numpy":
        opt = getattr(gen_np, rule.name)(**kwargs)
        params = [np.ones(shape)]
        params, _ = opt.step(params, [np.full(shape, 0.5)], opt.init(params))
        return params[0]
    if backend == "jax":
        tx = getattr(gen_jax, rule.module)(**kwargs)
        params = [jnp.ones(shape)]
        updates, _ = tx.update([jnp.full(shape, 0.5)], tx.init(params), params)
        return optax.apply_updates(params, updates)[0]
    w = torch.nn.Parameter(torch.ones(shape, dtype=torch.float64))
    opt = getattr(gen_torch, rule.name)([w], **torch_kwargs(kwargs))
    w.grad = torch.full(shape, 0.5, dtype=torch.float64)
    opt.step()
    return w.detach()


@pytest.mark.parametrize("shape", [(2,), (), (3,)], ids=["2", "0d", "3"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedule_returning_a_non_scalar_raises(rule, backend, shape):
    name = "lr" if backend == "torch" else "learning_rate"
    with pytest.raises((ValueError, TypeError), match=rf"({name}|learning.rate|schedule).*scalar"):
        schedule_step(backend, rule, shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedule_returning_shape_1_keeps_a_0d_parameter_or_raises(rule, backend):
    name = "lr" if backend == "torch" else "learning_rate"
    try:
        new = schedule_step(backend, rule, (), one_element_schedule)
    except (ValueError, TypeError) as error:
        assert re.search(rf"({name}|learning.rate|schedule).*scalar", str(error)), error
    else:
        assert np.shape(np.asarray(new)) == ()
