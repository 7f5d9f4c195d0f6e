"""What a PyTorch user expects of the generated ``torch.optim.Optimizer`` subclasses.

Every generic test is parametrized over the whole rule registry, so a new rule
is covered without editing this file.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import warnings

import pytest

torch = pytest.importorskip("torch")

import optforge.generated.torch as generated  # noqa: E402
from optforge.rules import registry  # noqa: E402

RULES = list(registry().values())
RULE_IDS = [r.name for r in RULES]
RULE_CONFIGS = [(r, name) for r in RULES for name in r.configs]
RULE_CONFIG_IDS = [f"{r.name}-{name}" for r, name in RULE_CONFIGS]


# --------------------------------------------------------------------------------------
# helpers


def optimizer_class(rule):
    return getattr(generated, rule.name)


def torch_name(name: str) -> str:
    return "lr" if name == "learning_rate" else name


def torch_kwargs(values: dict) -> dict:
    """Hyperparameters keyed as the torch optimizers take them (``learning_rate`` is ``lr``)."""
    return {torch_name(k): v for k, v in values.items()}


def required(rule) -> dict:
    """The arguments a rule cannot do without: the learning rate when it has no default (as in optax)."""
    return {"learning_rate": 0.01} if rule.hypers["learning_rate"].default is None else {}


def config_values(rule, name: str) -> dict:
    """A named config's hyperparameters, with the required ones filled in."""
    return {**required(rule), **rule.configs[name]}


def build(rule, params, **kwargs):
    """The rule's optimizer over ``params``; ``kwargs`` keyed as torch takes them (``lr``)."""
    return optimizer_class(rule)(params, **{**torch_kwargs(required(rule)), **kwargs})


@functools.cache
def state_scopes(rule) -> dict[str, str]:
    """State name -> "global", "tensor" (one value per parameter) or "element" (shaped like it)."""
    from optforge.compiler.pipeline import compile_rule

    return {st.name: st.scope.name.lower() for st in compile_rule(rule).states}


def other_hypers(rule) -> dict:
    """A valid value different from the default for every hyperparameter but the learning rate.

    Taken from the rule's own configs where one sets it, otherwise chosen inside the range.
    """
    out = {}
    for name, h in rule.hypers.items():
        if h.kind == "learning_rate":
            continue
        found = [cfg[name] for cfg in rule.configs.values() if name in cfg and cfg[name] != h.default]
        if found:
            out[name] = found[0]
        elif h.kind == "bool":
            out[name] = not h.default
        else:
            iv = h.interval
            lo = iv.low if math.isfinite(iv.low) else -1.0
            hi = iv.high if math.isfinite(iv.high) else lo + 2.0
            value = lo + 0.37 * (hi - lo)
            assert value in iv and value != h.default
            out[name] = value
    return out


def make_model(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(dtype)


def grad_sequence(model: torch.nn.Module, n: int, seed: int) -> list[list[torch.Tensor]]:
    """``n`` fixed random gradients (never exactly 0) for every parameter of ``model``."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()] for _ in range(n)
    ]


def apply_grads(model: torch.nn.Module, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y), (x - y).abs().max()


def group_entries(opt) -> list[dict]:
    """What each parameter group holds besides its parameters (hyperparameters, per-group state)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def expected_range_message(name: str, interval, value) -> str:
    lo = "[" if interval.low_closed else "("
    hi = "]" if interval.high_closed else ")"
    return (
        f"`{name}` must be in {lo}{_fmt(interval.low)}, {_fmt(interval.high)}{hi}. Received: {name}={value!r}"
    )


def out_of_range(interval) -> list[float]:
    """Values outside ``interval``, generated from its declaration."""
    values = [math.nan]
    if math.isfinite(interval.high):
        values.append(interval.high + 1.0)
    if math.isfinite(interval.low):
        values.append(interval.low - 1.0)
    if not interval.high_closed:
        values.append(float(interval.high))  # the open end itself (inf included)
    if not interval.low_closed:
        values.append(float(interval.low))
    return values


def closed_ends(interval) -> list[float]:
    values = []
    if interval.low_closed and math.isfinite(interval.low):
        values.append(float(interval.low))
    if interval.high_closed and math.isfinite(interval.high):
        values.append(float(interval.high))
    return values


BAD_RANGE = [
    pytest.param(r, name, v, id=f"{r.name}-{name}={v}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
    for v in out_of_range(h.interval)
]
GOOD_ENDS = [
    pytest.param(r, name, v, id=f"{r.name}-{name}={v}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
    for v in closed_ends(h.interval)
]
NON_BOOL = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind != "bool"
]
BOOL = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind == "bool"
]


# --------------------------------------------------------------------------------------
# 1. a training loop


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_training_loop_decreases_loss(rule):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    w_true = torch.tensor([[1.0], [-2.0], [0.5], [1.5]])
    y = x @ w_true + 0.3
    model = torch.nn.Linear(4, 1)
    opt = build(rule, model.parameters(), lr=0.05)
    loss_fn = torch.nn.MSELoss()
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# --------------------------------------------------------------------------------------
# 2. parameter groups


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_param_group_with_zero_lr_is_frozen(rule):
    model = make_model(1)
    first, second = model[0], model[2]
    opt = build(rule, [{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters(), "lr": 0.1}])
    before_first = [p.detach().clone() for p in first.parameters()]
    before_second = [p.detach().clone() for p in second.parameters()]
    for grads in grad_sequence(model, 5, seed=2):
        apply_grads(model, grads)
        opt.step()
    assert_bitwise(before_first, [p.detach() for p in first.parameters()])
    for b, p in zip(before_second, second.parameters()):
        assert not torch.equal(b, p.detach())


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_per_group_hyperparameters_are_honoured(rule):
    alt = other_hypers(rule)
    model = make_model(3)
    reference = copy.deepcopy(model)
    # group 0: defaults; group 1: every other hyperparameter changed
    opt = build(
        rule,
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.03, **alt}],
        lr=0.02,
    )
    ref_first = build(rule, reference[0].parameters(), lr=0.02)
    ref_second = build(rule, reference[2].parameters(), lr=0.03, **alt)
    default_only = copy.deepcopy(model)
    opt_default = build(rule, default_only.parameters(), lr=0.03)
    for grads in grad_sequence(model, 6, seed=4):
        apply_grads(model, grads)
        apply_grads(reference, grads)
        apply_grads(default_only, grads)
        opt.step()
        ref_first.step()
        ref_second.step()
        opt_default.step()
    assert_bitwise(params_of(reference), params_of(model))
    # the changed hyperparameters make a difference (otherwise the check above proves nothing)
    assert any(not torch.equal(a, b) for a, b in zip(params_of(default_only)[2:], params_of(model)[2:]))
    assert {k: opt.param_groups[1][k] for k in alt} == alt


# --------------------------------------------------------------------------------------
# 3. closures


@pytest.mark.parametrize("outer_no_grad", [False, True], ids=["plain", "under_no_grad"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_step_with_closure(rule, outer_no_grad):
    torch.manual_seed(5)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    model = torch.nn.Linear(4, 1)
    before = params_of(model)
    opt = build(rule, model.parameters(), lr=0.1)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        seen.append(loss)
        return loss

    if outer_no_grad:
        with torch.no_grad():
            result = opt.step(closure)
    else:
        result = opt.step(closure)
    assert len(seen) == 2 and seen[0] is True
    assert result is seen[1]
    assert result.requires_grad
    for b, p in zip(before, model.parameters()):
        assert not torch.equal(b, p.detach())
    assert opt.step() is None  # no closure: no loss


# --------------------------------------------------------------------------------------
# 4. zero_grad


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_zero_grad(rule):
    model = make_model(6)
    opt = build(rule, model.parameters(), lr=0.1)
    x = torch.randn(5, 4, dtype=torch.float64)
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model(x).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in model.parameters())


# --------------------------------------------------------------------------------------
# 5. parameters without gradients


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_params_without_grad_are_skipped(rule):
    model = make_model(7)
    opt = build(rule, model.parameters(), lr=0.1, **other_hypers(rule))
    used, unused = list(model[0].parameters()), list(model[2].parameters())
    before_unused = [p.detach().clone() for p in unused]
    before_used = [p.detach().clone() for p in used]
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        for p in used:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    for p, b in zip(unused, before_unused):
        assert p.grad is None
        assert torch.equal(p.detach(), b)
        assert p not in opt.state or len(opt.state[p]) == 0
    for p, b in zip(used, before_used):
        assert not torch.equal(p.detach(), b)


# --------------------------------------------------------------------------------------
# 6. state_dict / load_state_dict


@pytest.mark.parametrize("via_bytes", [False, True], ids=["object", "torch.save"])
@pytest.mark.parametrize(("rule", "config"), RULE_CONFIGS, ids=RULE_CONFIG_IDS)
def test_state_dict_roundtrip_resumes_bitwise(rule, config, via_bytes):
    cls = optimizer_class(rule)
    kwargs = torch_kwargs(config_values(rule, config))
    model = make_model(9)
    grads = grad_sequence(model, 20, seed=10)

    straight = copy.deepcopy(model)
    opt_straight = cls(straight.parameters(), **kwargs)
    for g in grads:
        apply_grads(straight, g)
        opt_straight.step()

    first = copy.deepcopy(model)
    opt_first = cls(first.parameters(), **kwargs)
    for g in grads[:10]:
        apply_grads(first, g)
        opt_first.step()
    saved = opt_first.state_dict()
    if via_bytes:
        buf = io.BytesIO()
        torch.save({"model": first.state_dict(), "optim": saved}, buf)
        buf.seek(0)
        checkpoint = torch.load(buf)
        resumed = make_model(99)  # other initial values: everything comes from the checkpoint
        resumed.load_state_dict(checkpoint["model"])
        saved = checkpoint["optim"]
    else:
        resumed = copy.deepcopy(first)
    del opt_first, first
    # a fresh optimizer with the default hyperparameters: load_state_dict restores the config's
    opt_resumed = build(rule, resumed.parameters())
    opt_resumed.load_state_dict(saved)
    for name, value in kwargs.items():
        assert opt_resumed.param_groups[0][name] == value
    for g in grads[10:]:
        apply_grads(resumed, g)
        opt_resumed.step()

    assert_bitwise(params_of(straight), params_of(resumed))
    assert group_entries(opt_straight) == group_entries(opt_resumed)
    for p_s, p_r in zip(straight.parameters(), resumed.parameters()):
        s, r = opt_straight.state[p_s], opt_resumed.state[p_r]
        assert set(s) == set(r)
        for key in s:
            assert torch.equal(s[key], r[key]), key


# --------------------------------------------------------------------------------------
# 7. learning-rate schedulers


def _run_with_scheduler(rule, make_scheduler):
    model = make_model(11)
    opt = build(rule, model.parameters(), lr=0.08, **other_hypers(rule))
    scheduler = make_scheduler(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for g in grad_sequence(model, 10, seed=12):
            lrs.append(opt.param_groups[0]["lr"])
            apply_grads(model, g)
            opt.step()
            scheduler.step()
    return params_of(model), lrs


def _run_with_lrs(rule, lrs):
    model = make_model(11)
    opt = build(rule, model.parameters(), lr=0.08, **other_hypers(rule))
    for lr, g in zip(lrs, grad_sequence(model, 10, seed=12)):
        for group in opt.param_groups:
            group["lr"] = lr
        apply_grads(model, g)
        opt.step()
    return params_of(model)


SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1.0 + epoch)),
}
EXPECTED_LRS = {
    "StepLR": [0.08 * 0.5 ** (i // 3) for i in range(10)],
    "LambdaLR": [0.08 * (1.0 / (1.0 + i)) for i in range(10)],
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_lr_scheduler(rule, scheduler):
    params, lrs = _run_with_scheduler(rule, SCHEDULERS[scheduler])
    assert lrs == pytest.approx(EXPECTED_LRS[scheduler], rel=1e-15)
    assert len(set(lrs)) > 1
    assert_bitwise(_run_with_lrs(rule, EXPECTED_LRS[scheduler]), params)
    # the schedule matters: a constant lr gives another result
    constant = _run_with_lrs(rule, [lrs[0]] * len(lrs))
    assert any(not torch.equal(a, b) for a, b in zip(constant, params))


# --------------------------------------------------------------------------------------
# 8. hyperparameter checks


@pytest.mark.parametrize(("rule", "name", "value"), BAD_RANGE)
def test_out_of_range_hyperparameter_raises_value_error(rule, name, value):
    model = torch.nn.Linear(2, 1)
    tname = torch_name(name)
    with pytest.raises(ValueError) as info:
        build(rule, model.parameters(), **{tname: value})
    assert str(info.value) == expected_range_message(tname, rule.hypers[name].interval, value)


def test_out_of_range_int_message_shows_the_value_received():
    rule = RULES[0]  # the message comes from the shared runtime: one rule is enough
    with pytest.raises(ValueError) as info:
        build(rule, list(torch.nn.Linear(2, 1).parameters()), lr=-1)
    assert str(info.value) == expected_range_message("lr", rule.hypers["learning_rate"].interval, -1)


@pytest.mark.parametrize(("rule", "name", "value"), GOOD_ENDS)
def test_closed_range_ends_are_accepted(rule, name, value):
    model = torch.nn.Linear(2, 1)
    opt = build(rule, model.parameters(), **{torch_name(name): value})
    assert opt.defaults[torch_name(name)] == value


@pytest.mark.parametrize(("rule", "name"), NON_BOOL)
@pytest.mark.parametrize("value", ["0.5", True, None], ids=["str", "bool", "None"])
def test_non_number_hyperparameter_raises_type_error(rule, name, value):
    model = torch.nn.Linear(2, 1)
    tname = torch_name(name)
    with pytest.raises(TypeError, match=f"`{tname}`"):
        build(rule, model.parameters(), **{tname: value})


@pytest.mark.parametrize(("rule", "name"), BOOL)
@pytest.mark.parametrize("value", ["yes", 1, None], ids=["str", "int", "None"])
def test_non_bool_flag_raises_type_error(rule, name, value):
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=f"`{name}`"):
        build(rule, model.parameters(), **{name: value})


def test_keras_form_messages_examples():
    params = list(torch.nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError) as info:
        generated.Adamax(params, beta_1=1.5)
    assert str(info.value) == "`beta_1` must be in [0, 1). Received: beta_1=1.5"
    with pytest.raises(ValueError, match="`lr`"):
        generated.SGD(params, lr=-0.1)
    with pytest.raises(TypeError):
        generated.SGD(params, nesterov="yes")


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_other_hyperparameters_are_keyword_only(rule):
    others = [n for n in rule.hypers if n != "learning_rate"]
    if not others:
        pytest.skip("no hyperparameter besides the learning rate")
    default = rule.hypers[others[0]].default
    with pytest.raises(TypeError):
        optimizer_class(rule)(list(torch.nn.Linear(2, 1).parameters()), 0.1, default)


# --------------------------------------------------------------------------------------
# 9. dtypes and stored state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("rule", "config"), RULE_CONFIGS, ids=RULE_CONFIG_IDS)
def test_dtype_is_kept(rule, config, dtype):
    model = make_model(13, dtype=dtype)
    opt = build(rule, model.parameters(), **torch_kwargs(config_values(rule, config)))
    before = params_of(model)
    for g in grad_sequence(model, 3, seed=14):
        apply_grads(model, g)
        opt.step()
    scopes = state_scopes(rule)
    for b, p in zip(before, model.parameters()):
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        assert not torch.equal(b, p.detach())
        for key, value in opt.state[p].items():
            if not torch.is_tensor(value) or not value.is_floating_point():
                continue
            assert value.dtype == dtype, key
            expected_shape = torch.Size([]) if scopes.get(key) == "tensor" else p.shape
            assert value.shape == expected_shape, key


def test_sgd_without_momentum_keeps_no_velocity():
    model = make_model(15)
    opt = generated.SGD(model.parameters(), lr=0.1, momentum=0.0)
    for g in grad_sequence(model, 2, seed=16):
        apply_grads(model, g)
        opt.step()
    for p in model.parameters():
        assert "velocity" not in opt.state[p]
        assert not any(torch.is_tensor(v) and v.shape == p.shape for v in opt.state[p].values())
    opt = generated.SGD(model.parameters(), lr=0.1, momentum=0.5)
    apply_grads(model, grad_sequence(model, 1, seed=17)[0])
    opt.step()
    for p in model.parameters():
        assert opt.state[p]["velocity"].shape == p.shape


# --------------------------------------------------------------------------------------
# 10. sparse gradients


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_sparse_gradients_raise(rule):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = build(rule, emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2, 4])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
