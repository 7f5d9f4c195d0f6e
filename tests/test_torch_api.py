"""What a PyTorch user expects of the generated ``torch.optim.Optimizer`` subclasses.

Every generic test is parametrized over the whole rule registry, so a new rule
is covered without editing this file.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

from cases import MACHINERY, first_step_moves, skip_without_kernels  # noqa: E402
from drivers import loss_kwargs  # noqa: E402
from hyper_cases import (  # noqa: E402
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

import optforge.generated.torch as generated  # noqa: E402

# --------------------------------------------------------------------------------------
# helpers


def optimizer_class(rule):
    return getattr(generated, rule.name)


def torch_name(name: str) -> str:
    return "lr" if name == "learning_rate" else name


def torch_label(rule, name: str) -> str:
    """How torch's class names a hyperparameter in messages and parameter groups: ``lr``, ``betas[0]``
    for ``beta_1``, ``eps`` for ``epsilon`` (its ``torch_names``), else the rule's name."""
    key, index = optimizer_class(rule).torch_names.get(name, (torch_name(name), None))
    return key if index is None else f"{key}[{index}]"


def group_value(rule, group: dict, name: str):
    """The value of the rule's hyperparameter ``name`` in a parameter group (or ``defaults``)."""
    key, index = optimizer_class(rule).torch_names.get(name, (torch_name(name), None))
    return group[key] if index is None else group[key][index]


def torch_keyword(rule, name: str, value) -> dict:
    """``{name: value}`` as a keyword of torch's (``betas=(value, default)`` for ``beta_1``): the rule's
    names are keywords too, but None there means "not given"."""
    cls = optimizer_class(rule)
    if name not in cls.torch_names:
        return {torch_name(name): value}
    key, index = cls.torch_names[name]
    if index is None:
        return {key: value}
    entries = list(build(rule, torch.nn.Linear(1, 1).parameters()).defaults[key])
    entries[index] = value
    return {key: tuple(entries)}


def torch_kwargs(values: dict) -> dict:
    """Hyperparameters keyed as the torch optimizers take them (``learning_rate`` is ``lr``)."""
    return {torch_name(k): v for k, v in values.items()}


def config_values(rule, name: str) -> dict:
    """A named config's hyperparameters, with the required ones filled in."""
    return {**required(rule), **rule.configs[name]}


def build(rule, params, **kwargs):
    """The rule's optimizer over ``params``; ``kwargs`` keyed as torch takes them (``lr``)."""
    return optimizer_class(rule)(params, **{**required(rule, lr_name="lr"), **kwargs})


def make_model(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    """Two linear layers and a 0-d parameter (a learned scale: under torch.compile a 0-d float64 tensor is
    traced as a Python float, see ``torch_support.traceable``)."""
    torch.manual_seed(seed)
    return ScaledMLP().to(dtype)


class ScaledMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.layers(x)

    def __getitem__(self, i: int) -> torch.nn.Module:
        return self.layers[i]


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


# --------------------------------------------------------------------------------------
# 1. a training loop


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_training_loop_decreases_loss(rule):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    w_true = torch.tensor([[1.0], [-2.0], [0.5], [1.5]])
    y = x @ w_true + 0.3
    loss_fn = torch.nn.MSELoss()
    # 50 steps at 0.05; Adadelta's steps start at about lr*sqrt(eps): 200 steps at its usual rate, 1.0;
    # LAMB's step is about lr*||w|| per tensor, which 1.0 overshoots: 0.1; LARS's trust ratio carries
    # optax's trust_coefficient of 0.001: 10
    for lr, steps in ((0.05, 50), (1.0, 200), (0.1, 200), (10.0, 200)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = build(rule, model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step(**({"value": loss} if rule.reads_loss else {}))  # Polyak's: the loss just computed
            losses.append(loss.item())
        assert all(math.isfinite(v) for v in losses)
        if losses[-1] < 0.5 * losses[0]:
            return
    raise AssertionError(f"the loss went from {losses[0]} to {losses[-1]} only")


# --------------------------------------------------------------------------------------
# 2. parameter groups


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_param_group_with_zero_lr_steps_as_an_optimizer_of_its_own(rule):
    """A group whose rate is 0 steps as an optimizer over its parameters alone with that rate: frozen for
    most rules, not for one whose rate scales only part of the step (LARS's trace, Rprop's first step);
    the other group moves, as an optimizer of its own with its rate."""
    model = make_model(1)
    reference = copy.deepcopy(model)
    first, second = model[0], model[2]
    opt = build(rule, [{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters(), "lr": 0.1}])
    alone = [build(rule, reference[0].parameters(), lr=0.0), build(rule, reference[2].parameters(), lr=0.1)]
    before_second = [p.detach().clone() for p in second.parameters()]
    for k, grads in enumerate(grad_sequence(model, 5, seed=2)):
        apply_grads(model, grads)
        apply_grads(reference, grads)
        opt.step(**loss_kwargs(rule, k))
        for o in alone:
            o.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(model), params_of(reference))
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before_second, second.parameters())]
    assert all(moved) if first_step_moves(rule) else any(moved)  # a lagging rule: some of them


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
    for k, grads in enumerate(grad_sequence(model, 6, seed=4)):
        apply_grads(model, grads)
        apply_grads(reference, grads)
        apply_grads(default_only, grads)
        for o in (opt, ref_first, ref_second, opt_default):
            o.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(reference), params_of(model))
    # the changed hyperparameters make a difference (otherwise the check above proves nothing)
    assert any(not torch.equal(a, b) for a, b in zip(params_of(default_only)[2:], params_of(model)[2:]))
    assert {k: group_value(rule, opt.param_groups[1], k) for k in alt} == alt


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
    for b, p in zip(before, model.parameters()):  # one step: none moves where the first step does not
        assert torch.equal(b, p.detach()) != first_step_moves(rule)
    assert opt.step(**loss_kwargs(rule, 1)) is None  # no closure: no loss returned (value= is not returned)


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
    for k in range(3):
        for p in used:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step(**loss_kwargs(rule, k))
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
    _roundtrip(rule, torch_kwargs(config_values(rule, config)), via_bytes, split=10)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_state_dict_roundtrip_with_every_option_mid_accumulation(rule):
    kwargs = torch_kwargs({**required(rule), **other_hypers(rule)})
    assert kwargs["gradient_accumulation_steps"] == 2 and kwargs["use_ema"]
    _roundtrip(rule, kwargs, via_bytes=True, split=9)  # saved between the two calls of an update


def _roundtrip(rule, kwargs, via_bytes, split):
    cls = optimizer_class(rule)
    model = make_model(9)
    grads = grad_sequence(model, 20, seed=10)

    straight = copy.deepcopy(model)
    opt_straight = cls(straight.parameters(), **kwargs)
    for k, g in enumerate(grads):
        apply_grads(straight, g)
        opt_straight.step(**loss_kwargs(rule, k))

    first = copy.deepcopy(model)
    opt_first = cls(first.parameters(), **kwargs)
    for k, g in enumerate(grads[:split]):
        apply_grads(first, g)
        opt_first.step(**loss_kwargs(rule, k))
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
        assert group_value(rule, opt_resumed.param_groups[0], name) == value
    for k, g in enumerate(grads[split:], start=split):  # the values the uninterrupted run got at these steps
        apply_grads(resumed, g)
        opt_resumed.step(**loss_kwargs(rule, k))

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
        for k, g in enumerate(grad_sequence(model, 10, seed=12)):
            lrs.append(opt.param_groups[0]["lr"])
            apply_grads(model, g)
            opt.step(**loss_kwargs(rule, k))
            scheduler.step()
    return params_of(model), lrs


def _run_with_lrs(rule, lrs):
    model = make_model(11)
    opt = build(rule, model.parameters(), lr=0.08, **other_hypers(rule))
    for k, (lr, g) in enumerate(zip(lrs, grad_sequence(model, 10, seed=12))):
        for group in opt.param_groups:
            group["lr"] = lr
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
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
    tname = torch_name(name)  # the rule's names are keywords too
    with pytest.raises(ValueError) as info:
        build(rule, model.parameters(), **{tname: value})
    label = torch_label(rule, name)
    assert str(info.value) == expected_range_message(label, rule.hypers[name].interval, value)


def test_out_of_range_int_message_shows_the_value_received():
    rule = RULES[0]  # the message comes from the shared runtime: one rule is enough
    with pytest.raises(ValueError) as info:
        build(rule, list(torch.nn.Linear(2, 1).parameters()), lr=-1)
    assert str(info.value) == expected_range_message("lr", rule.hypers["learning_rate"].interval, -1)


@pytest.mark.parametrize(("rule", "name", "value"), GOOD_ENDS)
def test_closed_range_ends_are_accepted(rule, name, value):
    model = torch.nn.Linear(2, 1)
    opt = build(rule, model.parameters(), **{torch_name(name): value})
    kept, expected = group_value(rule, opt.defaults, name), stored(rule.hypers[name], value)
    assert kept == expected and type(kept) is type(expected)


@pytest.mark.parametrize(("rule", "name", "value"), WRONG_TYPE)
def test_wrong_type_hyperparameter_raises_type_error(rule, name, value):
    model = torch.nn.Linear(2, 1)
    label = torch_label(rule, name)
    with pytest.raises(TypeError, match=re.escape(f"`{label}`")) as info:
        build(rule, model.parameters(), **torch_keyword(rule, name, value))
    if rule.hypers[name].kind == "int":
        assert str(info.value).startswith(f"`{name}` must be an int or None. Received: {name}={value!r}")


@pytest.mark.parametrize(("rule", "name"), OPTIONS)
def test_option_is_off_by_default_and_takes_none_or_a_number(rule, name):
    h = rule.hypers[name]
    params = list(torch.nn.Linear(2, 1).parameters())
    assert group_value(rule, build(rule, params).defaults, name) == h.default  # off, or on at its default
    assert group_value(rule, build(rule, params, **torch_keyword(rule, name, None)).defaults, name) is None
    if h.kind == "int":
        value, kinds = inside(h), [int]
    else:
        value, kinds = 1, [float, int]  # a whole number is a valid float too
        assert value in h.interval
    for kind in kinds:
        kept = group_value(rule, build(rule, params, **torch_keyword(rule, name, kind(value))).defaults, name)
        assert kept == value and type(kept) is (int if h.kind == "int" else float)


@pytest.mark.parametrize(("rule", "combo"), CLIPPING_PAIRS)
def test_two_clipping_options_raise(rule, combo):
    params = list(torch.nn.Linear(2, 1).parameters())
    given = {k: CLIPPING_VALUES[k] for k in combo}
    with pytest.raises(ValueError) as info:
        build(rule, params, **given)
    assert str(info.value) == clipping_message(given)
    for name in combo:  # each alone is fine
        assert build(rule, params, **{name: given[name]}).defaults[name] == given[name]


@pytest.mark.parametrize(("rule", "name"), BOOL)
@pytest.mark.parametrize("value", ["yes", 1, None], ids=["str", "int", "None"])
def test_non_bool_flag_raises_type_error(rule, name, value):
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=f"`{name}`"):
        build(rule, model.parameters(), **{name: value})


def test_keras_form_messages_examples():
    params = list(torch.nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError) as info:
        generated.Adamax(params, betas=(1.5, 0.999))
    assert str(info.value) == "`betas[0]` must be in [0, 1). Received: betas[0]=1.5"
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
    for k, g in enumerate(grad_sequence(model, 3, seed=14)):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())]
    assert all(moved) if first_step_moves(rule) else any(moved)  # a lagging rule: some of them
    for p in model.parameters():
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            if not torch.is_tensor(value) or not value.is_floating_point():
                continue
            assert value.dtype == dtype, key
            assert value.shape == state_shape(rule, key, p.shape, config_values(rule, config)), key


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
        opt.step(**loss_kwargs(rule, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_dtype_is_kept_with_every_option(rule, dtype):
    model = make_model(13, dtype=dtype)
    opt = build(rule, model.parameters(), lr=lambda: 0.02, **other_hypers(rule))
    before = params_of(model)
    for k, g in enumerate(grad_sequence(model, 4, seed=14)):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
    for b, p in zip(before, model.parameters()):
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        assert not torch.equal(b, p.detach())
        assert {"grad_accumulator", "ema"} <= set(opt.state[p])
        for key, value in opt.state[p].items():
            if not torch.is_tensor(value) or not value.is_floating_point():
                continue
            assert value.dtype == dtype, key
            assert value.shape == state_shape(rule, key, p.shape, other_hypers(rule)), key


# --------------------------------------------------------------------------------------
# 11. Keras's shared options


def run_steps(rule, model, grads, groups=None, loss_steps=None, **kwargs):
    """A copy of ``model`` and its optimizer after a step per gradient; ``groups``: hyperparameters of
    a single parameter group (instead of the constructor's); ``loss_steps``: the index ``k`` whose objective
    value (``drivers.objective``) each step is given, where the rule reads it (default 0, 1, 2, ...)."""
    model = copy.deepcopy(model)
    params = model.parameters() if groups is None else [{"params": model.parameters(), **groups}]
    opt = build(rule, params, **kwargs)
    for k, g in zip(range(len(grads)) if loss_steps is None else loss_steps, grads, strict=True):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
    return model, opt


def assert_same_run(a, b) -> None:
    (model_a, opt_a), (model_b, opt_b) = a, b
    assert_bitwise(params_of(model_a), params_of(model_b))
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        s_a, s_b = opt_a.state[p_a], opt_b.state[p_b]
        assert set(s_a) == set(s_b)  # no state for an option that is off
        for key in s_a:
            assert torch.equal(s_a[key], s_b[key]), key


@pytest.mark.parametrize(("rule", "name"), ZERO_IS_OFF)
def test_zero_means_off_like_none(rule, name):
    h = rule.hypers[name]
    base = {"use_ema": True}  # so that ema_overwrite_frequency would act
    model = make_model(17)
    grads = grad_sequence(model, 4, seed=18)
    off = run_steps(rule, model, grads, **base)
    assert_same_run(off, run_steps(rule, model, grads, **base, **{name: None}))
    for zero in [0] if h.kind == "int" else [0, 0.0]:
        run = run_steps(rule, model, grads, **base, **{name: zero})
        assert run[1].defaults[name] is None
        assert_same_run(off, run)
    # given a value that is not 0, the option acts (otherwise the checks above prove nothing), on the
    # parameters or only on the state (clipping a sign-based rule's gradients)
    on = run_steps(rule, model, grads, **base, **{name: inside(h)})

    def tensors(run):
        model, opt = run
        return [*params_of(model), *(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))]

    moved = any(not torch.equal(a, b) for a, b in zip(tensors(on), tensors(off)))
    if not moved and clipping_unseen(rule, name):
        pytest.skip(clipping_unseen(rule, name))  # a sign-based rule: the checks above are all there is
    assert moved


@pytest.mark.parametrize(("rule", "name"), ZERO_IS_OFF)
def test_zero_means_off_like_none_in_a_param_group(rule, name):
    base = {"use_ema": True}
    model = make_model(17)
    grads = grad_sequence(model, 4, seed=18)
    off = run_steps(rule, model, grads, **base)
    assert_same_run(off, run_steps(rule, model, grads, groups={name: 0}, **base))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_learning_rate_callable_without_arguments_is_called_each_step(rule):
    calls = []

    def constant():
        calls.append(None)
        return 0.02

    model = make_model(19)
    grads = grad_sequence(model, 4, seed=20)
    trained = copy.deepcopy(model)
    opt = build(rule, trained.parameters(), lr=constant)
    for k, g in enumerate(grads):
        apply_grads(trained, g)
        opt.step(**loss_kwargs(rule, k))
        assert len(calls) == k + 1  # Keras: called with no arguments, once per step
    as_float, _ = run_steps(rule, model, grads, lr=0.02)
    assert_bitwise(params_of(as_float), params_of(trained))

    # a value that changes between calls is read at each step, all options on
    others = other_hypers(rule)
    values = [0.03, 0.01, 0.02, 0.005]
    queue = iter(values)
    varying, _ = run_steps(rule, model, grads, lr=lambda: next(queue), **others)
    manual = copy.deepcopy(model)
    opt = build(rule, manual.parameters(), **others)
    for k, (lr, g) in enumerate(zip(values, grads)):
        opt.param_groups[0]["lr"] = lr
        apply_grads(manual, g)
        opt.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(varying), params_of(manual))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_lr_schedule_receives_the_call_count_from_zero(rule):
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.02 / (1 + step)

    others = other_hypers(rule)  # gradient accumulation included: the schedule still sees every call
    model = make_model(23)
    grads = grad_sequence(model, 4, seed=24)
    scheduled, opt = run_steps(rule, model, grads, lr=schedule, **others)
    assert seen == [0, 1, 2, 3] and opt.param_groups[0]["step"] == 4
    manual = copy.deepcopy(model)
    opt = build(rule, manual.parameters(), **others)
    for k, g in enumerate(grads):
        opt.param_groups[0]["lr"] = 0.02 / (1 + k)
        apply_grads(manual, g)
        opt.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(scheduled), params_of(manual))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_gradient_accumulation_counts_calls_and_updates_every_nth(rule):
    n_acc = 3
    model = make_model(21)
    grads = grad_sequence(model, 2 * n_acc, seed=22)
    trained = copy.deepcopy(model)
    opt = build(rule, trained.parameters(), gradient_accumulation_steps=n_acc)
    for k, g in enumerate(grads):
        before = params_of(trained)
        apply_grads(trained, g)
        opt.step(**loss_kwargs(rule, k))
        assert opt.param_groups[0]["step"] == k + 1  # the step counter counts calls
        changed = any(not torch.equal(a, b) for a, b in zip(before, params_of(trained)))
        # only an update call moves the parameters (the first does not where the rule's first step does not)
        moves = (k + 1) % n_acc == 0 and (k + 1 > n_acc or first_step_moves(rule))
        assert changed == moves, k
    # the same as one step per n_acc calls, with the mean of their gradients (and, for a rule that reads
    # the objective's value, the value given at the update call, as optax.MultiSteps passes it on)
    means = [
        [sum(parts) / n_acc for parts in zip(*grads[j : j + n_acc])] for j in range(0, len(grads), n_acc)
    ]
    reference, _ = run_steps(rule, model, means, loss_steps=range(n_acc - 1, len(grads), n_acc))
    for a, b in zip(params_of(trained), params_of(reference)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_a_deep_copied_or_pickled_optimizer_steps_like_the_original(rule, fused):
    """copy.deepcopy and torch.save/torch.load keep the optimizer's own options (state_dtype, fused): the
    copy's next steps equal the original's, bit for bit."""
    skip_without_kernels(rule, fused)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = optimizer_class(rule)(params, lr=0.01, state_dtype=torch.float64, fused=fused)
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]

    def step(o, k):
        for p, x in zip(o.param_groups[0]["params"], grads[k]):
            p.grad = x.clone()
        o.step(**loss_kwargs(rule, k))

    step(opt, 0)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(opt), torch.load(buffer, weights_only=False)]
    for o in [opt, *copies]:
        step(o, 1)
        step(o, 2)
    for o in copies:
        assert o.fused is fused and o.state_dtype == torch.float64
        for p, q in zip(opt.param_groups[0]["params"], o.param_groups[0]["params"]):
            assert torch.equal(p, q)
            for name, value in opt.state[p].items():
                assert torch.equal(value, o.state[q][name]), name


# --------------------------------------------------------------------------------------
# 12. torch's names: betas, eps, maximize, a tensor lr; torch's schedulers that cycle momentum


def _names(rule) -> dict:
    """``{rule's name: (torch's key, index)}`` of the rule's torch class."""
    return dict(optimizer_class(rule).torch_names)


def _run(rule, grads_sign=1.0, steps=6, **kwargs):
    model = make_model(21)
    opt = build(rule, model.parameters(), **kwargs)
    for k, g in enumerate(grad_sequence(model, steps, seed=22)):
        apply_grads(model, [grads_sign * x for x in g])
        opt.step(**loss_kwargs(rule, k))
    return params_of(model), opt


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_names_and_the_rules_names_give_the_same_steps(rule):
    """``betas=(a, b), eps=e`` (torch's) is ``beta_1=a, beta_2=b, epsilon=e`` (the rule's), as constructor
    keywords and in a parameter group; the parameter groups hold torch's names only."""
    names = _names(rule)
    if not names:
        pytest.skip(f"{rule.name} has no hyperparameter torch names otherwise")
    values = {n: inside(rule.hypers[n]) for n in names}  # inside each one's range (Rprop's etaplus > 1)
    defaults = build(rule, torch.nn.Linear(1, 1).parameters()).defaults
    torch_kw: dict = {}
    for name, (key, index) in names.items():
        if index is None:
            torch_kw[key] = values[name]
        else:
            entries = list(torch_kw.get(key, defaults[key]))
            entries[index] = values[name]
            torch_kw[key] = tuple(entries)
    want, opt = _run(rule, **torch_kw)
    group = opt.param_groups[0]
    assert not set(names) & set(group), f"the group holds the rule's names: {sorted(set(names) & set(group))}"
    got, _ = _run(rule, **values)
    assert_bitwise(got, want)
    model = make_model(21)
    opt = optimizer_class(rule)(
        [{"params": list(model.parameters()), **values}], **required(rule, lr_name="lr")
    )
    for k, g in enumerate(grad_sequence(model, 6, seed=22)):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(model), want)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_a_value_put_into_a_group_mid_training_is_checked_and_the_rules_name_is_read(rule):
    """``opt.param_groups[0]["betas"] = (1.5, 0.999)`` between steps: the next step raises as the constructor
    would, naming the group; ``param_groups[0]["beta_1"] = 0.37`` (the rule's name, a value inside its
    range) is what ``betas[0] = 0.37`` does, not ignored."""
    floats = [(n, h) for n, h in rule.hypers.items() if h.kind == "float" and h.interval is not None]
    assert floats
    for name, h in floats:
        bad = h.interval.high + 1 if math.isfinite(h.interval.high) else h.interval.low - 1
        model = make_model(21)
        opt = build(rule, model.parameters())
        grads = grad_sequence(model, 2, seed=22)
        apply_grads(model, grads[0])
        opt.step(**loss_kwargs(rule, 0))
        opt.param_groups[0].update(torch_keyword(rule, name, bad))
        apply_grads(model, grads[1])
        label = re.escape(torch_label(rule, name))
        with pytest.raises(ValueError, match=rf"param_groups\[0\]: `{label}` must be"):
            opt.step(**loss_kwargs(rule, 1))
    named = {n: h for n, h in floats if n in optimizer_class(rule).torch_names and h.default}
    for name, h in named.items():
        runs = []
        for entry in ({name: inside(h)}, torch_keyword(rule, name, inside(h))):
            model = make_model(21)
            opt = build(rule, model.parameters())
            for k, g in enumerate(grad_sequence(model, 4, seed=22)):
                if k == 2:
                    opt.param_groups[0].update(entry)
                apply_grads(model, g)
                opt.step(**loss_kwargs(rule, k))
            assert name not in opt.param_groups[0]
            runs.append(params_of(model))
        assert_bitwise(runs[0], runs[1])


@pytest.mark.parametrize("rule", MACHINERY, ids=[r.name for r in MACHINERY])
def test_the_step_compiles_in_one_graph_and_follows_a_tensor_lr(rule):
    """``torch.compile(opt.step, fullgraph=True)`` traces (torch.compile sets ``capturable`` in the groups it
    traces: the check of a group's values must not refuse it) and steps as the plain step; a tensor put
    into a group's ``lr`` stays that tensor, so a later ``fill_`` is followed: the step after ``fill_(0)``
    is the step of a group whose rate was set to 0.0 (a rate of 0 need not freeze the parameters: LARS's
    trace holds steps already scaled, Rprop reads the rate at the first step only)."""
    want, _ = _run(rule, steps=3)
    # the step's code is shared by every optimizer: each earlier test's traces count towards Dynamo's
    # recompile limit (8), which one program with one optimizer does not reach
    torch._dynamo.reset()
    model = make_model(21)
    opt = build(rule, model.parameters())
    grads = grad_sequence(model, 3, seed=22)
    apply_grads(model, grads[0])
    opt.step()
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    for g in grads[1:]:
        apply_grads(model, g)
        step()
    # to a rounding: Dynamo traces w.addcdiv_(a, b, value=c) as one fused multiply-add, fma(a/b, c, w)
    # (torch 2.13), where the eager kernel rounds c*(a/b) first on some tensor sizes
    for x, y in zip(params_of(model), want):
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=4e-16, atol=0.0)
    runs = []
    for tensor_lr in (True, False):
        model = make_model(21)
        opt = build(rule, model.parameters())
        lr = torch.tensor(float(opt.param_groups[0]["lr"]), dtype=torch.float64)  # the float's value
        if tensor_lr:
            opt.param_groups[0]["lr"] = lr
        apply_grads(model, grads[0])
        opt.step()
        if tensor_lr:
            assert opt.param_groups[0]["lr"] is lr
            lr.fill_(0.0)
        else:
            opt.param_groups[0]["lr"] = 0.0
        apply_grads(model, grads[1])
        opt.step()
        runs.append(params_of(model))
    assert_bitwise(runs[0], runs[1])


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_an_optimizer_pickled_before_the_torch_flags_steps(rule):
    """An optimizer pickled when its groups held no ``foreach``/``capturable``/``differentiable`` (torch adds
    some to ``defaults`` only when unpickling) steps after unpickling, as before."""
    import pickle

    model = make_model(21)
    opt = build(rule, model.parameters())
    apply_grads(model, grad_sequence(model, 1, seed=22)[0])
    opt.step(**loss_kwargs(rule, 0))
    state = opt.__getstate__()
    for d in [state["defaults"], *state["param_groups"]]:
        for name in ("foreach", "capturable", "differentiable"):
            d.pop(name, None)
    old = optimizer_class(rule).__new__(optimizer_class(rule))
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert all(g["differentiable"] is False for g in old.param_groups)
    old.step(**loss_kwargs(rule, 1))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_torch_optims_foreach_capturable_and_differentiable_keywords(rule):
    """Code written for torch.optim passes ``foreach=``, ``capturable=False``, ``differentiable=False``: they
    are taken and kept in the parameter groups as torch.optim keeps them, and ``foreach`` changes no result;
    ``capturable=True`` and ``differentiable=True`` are refused with the reason (not a TypeError)."""
    want, _ = _run(rule)
    for foreach in (None, True, False):
        got, opt = _run(rule, foreach=foreach, capturable=False, differentiable=False)
        assert_bitwise(got, want)
        group = opt.param_groups[0]
        assert (group["foreach"], group["capturable"], group["differentiable"]) == (foreach, False, False)
    params = list(torch.nn.Linear(2, 1).parameters())
    for name in ("capturable", "differentiable"):
        with pytest.raises(NotImplementedError, match=f"`{name}=True`: .* Use {name}=False"):
            build(rule, params, **{name: True})
        opt = build(rule, params[:1])
        with pytest.raises(NotImplementedError, match=f"`{name}=True`"):
            opt.add_param_group({"params": params[1:], name: True})
    with pytest.raises(TypeError, match="`foreach` must be None or a bool. Received: foreach='yes'"):
        build(rule, params, foreach="yes")


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_maximize_is_the_step_on_the_negated_gradient(rule):
    want, _ = _run(rule, grads_sign=-1.0)
    got, opt = _run(rule, maximize=True)
    assert opt.param_groups[0]["maximize"] is True
    assert_bitwise(got, want)
    plain, _ = _run(rule)
    assert any(not torch.equal(a, b) for a, b in zip(plain, got))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_a_tensor_learning_rate_is_taken_as_its_value(rule):
    want, _ = _run(rule, lr=0.03125)
    got, _ = _run(rule, lr=torch.tensor(0.03125))  # exact in float32 and float64
    assert_bitwise(got, want)


def _momentum_key(opt) -> str | None:
    return "betas" if "betas" in opt.defaults else ("momentum" if "momentum" in opt.defaults else None)


MOMENTUM_CYCLES = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3),
}


@pytest.mark.parametrize("scheduler", list(MOMENTUM_CYCLES))
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_schedulers_cycle_the_momentum_the_rule_reads(rule, scheduler):
    """OneCycleLR and CyclicLR with ``cycle_momentum`` (their default) find torch's momentum (``betas[0]``
    or ``momentum``) and change it every step; the result is that of the same values set by hand, and not
    that of a constant momentum."""
    model = make_model(21)
    opt = build(rule, model.parameters())
    key = _momentum_key(opt)
    if key is None:
        pytest.skip(
            f"{rule.name} has no momentum (torch.optim's OneCycleLR needs betas or momentum to cycle it)"
        )
    scheduler = MOMENTUM_CYCLES[scheduler](opt)
    seen = []
    for k, g in enumerate(grad_sequence(model, 8, seed=22)):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0][key]))
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
        scheduler.step()
    assert len({m for _, m in seen}) > 1, "the momentum did not change"

    def by_hand(momenta):
        model = make_model(21)
        opt = build(rule, model.parameters())
        for k, ((lr, m), g) in enumerate(zip(momenta, grad_sequence(model, 8, seed=22))):
            opt.param_groups[0]["lr"], opt.param_groups[0][key] = lr, m
            apply_grads(model, g)
            opt.step(**loss_kwargs(rule, k))
        return params_of(model)

    assert_bitwise(by_hand(seen), params_of(model))
    constant = by_hand([(lr, seen[0][1]) for lr, _ in seen])
    assert any(not torch.equal(a, b) for a, b in zip(constant, params_of(model)))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_a_state_dict_with_the_rules_names_in_its_groups_loads(rule):
    """A checkpoint written before torch's names (``beta_1`` in its groups, no ``maximize``) resumes bit
    for bit."""
    names = _names(rule)
    model = make_model(21)
    opt = build(rule, model.parameters())
    grads = grad_sequence(model, 6, seed=22)
    for k, g in enumerate(grads[:3]):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for name, (key, index) in names.items():
            group[name] = group[key] if index is None else group[key][index]
        for key in {key for key, _ in names.values()}:
            del group[key]
        del group["maximize"]
    resumed = copy.deepcopy(model)
    opt2 = build(rule, resumed.parameters())
    opt2.load_state_dict(saved)
    for k, g in enumerate(grads[3:], start=3):
        apply_grads(model, g)
        opt.step(**loss_kwargs(rule, k))
        apply_grads(resumed, g)
        opt2.step(**loss_kwargs(rule, k))
    assert_bitwise(params_of(resumed), params_of(model))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_the_plain_step_reads_no_tensor_as_a_number(rule):
    """No ``.item()`` in a step (``aten._local_scalar_dense``: a device synchronisation on a GPU, and no
    CUDA graph): with no option, with each clipping option and with the others, ``fused=False``. LAMB's
    trust ratio and Adafactor's clipped rate were read as ``alpha=`` (torch converts it with ``.item()``):
    one synchronisation per tensor per step; a user's review found it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Items(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Items.count += 1
            return func(*args, **(kwargs or {}))

    options = [{}, {"clipnorm": 1.0}, {"global_clipnorm": 1.0}]
    options.append({"use_ema": True, "gradient_accumulation_steps": 2, "loss_scale_factor": 2.0})
    for kwargs in options:
        model = make_model(31)
        opt = build(rule, model.parameters(), fused=False, **kwargs)
        for k in range(3):
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.1 * (k + 1))
            # the objective's value as a closure gives it, a 0-d tensor: not read as a number either
            loss = {n: torch.tensor(v, dtype=torch.float64) for n, v in loss_kwargs(rule, k).items()}
            if k == 0:
                opt.step(**loss)  # the first step makes the state
                continue
            with Items():
                opt.step(**loss)
        assert Items.count == 0, f"{rule.name} {kwargs}: {Items.count} tensor(s) read as a number"


def test_a_select_on_a_per_tensor_test_broadcasts_into_its_mask(tmp_path):
    """``where(Eq(tensor_norm(g), 0), w, ...)``: the test is one 0-d tensor per tensor; its negation was
    written with ``torch.logical_not(nw == 0, out=_m0)`` into a mask of the tensor's shape, which torch
    resized to 0-d with a deprecation warning every step (a future torch raises there; a user's rule found
    it). It is broadcast into the mask now: no warning, and the steps equal a NumPy transcription."""
    import numpy as np
    from drivers import assert_close, problem
    from rulekit import load

    from optforge.compiler.dsl import Eq, Rule, g, tensor_norm, w, where

    r = Rule("UserTensorCondition", title="a step normalised per tensor, then one where g > 0")
    lr = r.learning_rate(0.1)
    nw = r.let("nw", tensor_norm(g), "the gradient's norm")
    r.assign(w, where(Eq(nw, 0), w, w - lr * g / nw), "normalised step (a test per tensor)")
    r.assign(w, where(g > 0, w - 0.01, w), "a step where g > 0 (a test per element)")
    mods = load(r, tmp_path)
    params0, grads = problem(3, shapes=[(5,), (3, 4), ()], scales=[1.0, 1.0, 1.0])
    grads[1][0] = np.zeros(5)  # a tensor whose gradient is 0: its norm test holds
    want = [p.copy() for p in params0]
    for gs in grads:
        for i, x in enumerate(gs):
            n = np.sqrt(np.sum(x * x))
            want[i] = want[i] - 0.1 * x / n if n else want[i]
            want[i] = np.where(x > 0, want[i] - 0.01, want[i])
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = mods["torch"].UserTensorCondition(params, lr=0.1, fused=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "An output with one or more elements was resized"
        for gs in grads:
            for p, x in zip(params, gs):
                p.grad = torch.tensor(x)
            opt.step()
    assert_close([p.detach().numpy() for p in params], want, 1e-12, "torch vs the transcription")
