"""Keras's shared options on every optimizer, against keras.optimizers (KERAS_BACKEND=jax, float64).

REFERENCE_RULES.md sections 2.1-2.2: each option alone (on one rule each, turning) and the combinations
that interact (accumulation with a schedule, with clipping, with weight decay, with EMA and overwrite; the
first ones on every rule), 60 steps, <= 1e-12 relative, in all three backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import MACHINERY, REDUCTIONS, RULES, features
from drivers import BACKENDS, assert_close, problem, run, varying_lr
from references import keras_run, keras_schedule

STEPS = 60

#: the configuration of each Keras rule the options run on (momentum, Nesterov, non-default betas...)
BASE = {
    "SGD": dict(learning_rate=0.05, momentum=0.9, nesterov=True),
    "Adamax": dict(learning_rate=0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-3),
    "Adagrad": dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3),
    "Nadam": dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-4),
}

OPTIONS = {
    "weight_decay": dict(weight_decay=0.05),
    "clipnorm": dict(clipnorm=0.5),
    "clipvalue": dict(clipvalue=0.3),
    "global_clipnorm": dict(global_clipnorm=1.0),
    "ema": dict(use_ema=True, ema_momentum=0.9),
    "ema_overwrite": dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5),
    "loss_scale": dict(loss_scale_factor=128.0),
    "accumulation": dict(gradient_accumulation_steps=3),
    "accumulation_schedule": dict(gradient_accumulation_steps=3),  # with a schedule (below)
    "accumulation_clipnorm": dict(gradient_accumulation_steps=3, clipnorm=0.5),
    "accumulation_global_clipnorm": dict(
        gradient_accumulation_steps=2, global_clipnorm=1.0, loss_scale_factor=4.0
    ),
    "accumulation_weight_decay": dict(gradient_accumulation_steps=3, weight_decay=0.05),
    "accumulation_ema_overwrite": dict(
        gradient_accumulation_steps=3, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=2
    ),
    "everything": dict(
        weight_decay=0.01,
        clipvalue=0.5,
        use_ema=True,
        ema_momentum=0.7,
        ema_overwrite_frequency=4,
        loss_scale_factor=2.0,
        gradient_accumulation_steps=2,
    ),
}
SCHEDULED = {"accumulation_schedule"}


#: on every Keras rule: the options together
ON_EVERY_RULE = ("everything",)


def _option_cases() -> list:
    """Each option on one Keras rule, turning through them; the ON_EVERY_RULE ones on all. The options are
    stages written once per framework around whatever the rule computes (runtime/options_*.py), so each
    is checked against Keras once, and their composition with every rule by the combinations; the fused
    kernels, which compile the options in per rule, are compared with these paths in test_fused.py."""
    names = list(BASE)
    single = [o for o in OPTIONS if o not in ON_EVERY_RULE]
    return [
        pytest.param(names[i % len(names)], o, id=f"{names[i % len(names)]}-{o}")
        for i, o in enumerate(single)
    ] + [pytest.param(r, o, id=f"{r}-{o}") for o in ON_EVERY_RULE for r in names]


@pytest.mark.parametrize("rule_name, option", _option_cases())
def test_option_matches_keras(rule_name, option):
    rule = RULES[rule_name]
    hypers = {**BASE[rule_name], **OPTIONS[option]}
    params0, grads = problem(STEPS)
    base_lr = hypers["learning_rate"]
    scheduled = option in SCHEDULED
    want = keras_run(
        rule_name, hypers, params0, grads, keras_schedule(varying_lr(base_lr)) if scheduled else base_lr
    )
    for backend in BACKENDS:
        got, _ = run(backend, rule, hypers, params0, grads, varying_lr(base_lr) if scheduled else None)
        assert_close(got, want, 1e-12, f"{backend} vs keras.optimizers.{rule_name} with {option}")


# --------------------------------------------------------------------------------------
# finalize_variable_values, state memory, ema_overwrite_frequency=0


def _ours_finalized(backend, rule, hypers, params0, grads):
    import jax.numpy as jnp
    import optax
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    if backend == "numpy":
        opt = getattr(gn, rule.name)(**hypers)
        p = [x.copy() for x in params0]
        st = opt.init(p)
        for g in grads:
            p, st = opt.step(p, g, st)
        return opt.finalize_variable_values(p, st)
    if backend == "jax":
        import importlib

        tx = getattr(gj, rule.module)(**hypers)
        p = [jnp.asarray(x) for x in params0]
        st = tx.init(p)
        for g in grads:
            u, st = tx.update([jnp.asarray(x) for x in g], st, p)
            p = optax.apply_updates(p, u)
        module = importlib.import_module(f"optforge.generated.jax.{rule.module}")
        return [np.asarray(x) for x in module.finalize_variable_values(p, st, **hypers)]
    kw = {("lr" if k == "learning_rate" else k): v for k, v in hypers.items()}
    tp = [torch.tensor(x, requires_grad=True) for x in params0]
    opt = getattr(gt, rule.name)(tp, **kw)
    for g in grads:
        for q, x in zip(tp, g):
            q.grad = torch.tensor(x)
        opt.step()
    opt.finalize_variable_values()
    return [q.detach().numpy() for q in tp]


@pytest.mark.parametrize("rule_name", ["Adamax", "SGD"])
def test_finalize_variable_values_matches_keras(rule_name):
    hypers = {**BASE[rule_name], "use_ema": True, "ema_momentum": 0.9, "gradient_accumulation_steps": 2}
    params0, grads = problem(12)
    want = keras_run(rule_name, hypers, params0, grads, hypers["learning_rate"], finalize=True)
    before, _ = run("numpy", RULES[rule_name], hypers, params0, grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(before, want)) > 0, "finalize changed nothing"
    for backend in BACKENDS:
        assert_close(_ours_finalized(backend, RULES[rule_name], hypers, params0, grads), want, 1e-12, backend)


def test_jax_finalize_with_other_keywords_than_the_optimizers_is_an_error():
    """JAX's ``finalize_variable_values`` is a function of the keywords it is given: without
    ``use_ema=True`` again, a state that keeps an EMA returned the raw weights in silence (a helper found
    it); it is an error that says what to pass, and so is ``use_ema=True`` for a state without one."""
    import importlib

    import jax.numpy as jnp

    module = importlib.import_module("optforge.generated.jax.adamax")
    p = [jnp.ones(3)]
    with_ema = module.adamax(learning_rate=0.1, use_ema=True).init(p)
    with pytest.raises(
        ValueError, match=r"keeps 'ema', which it does only when use_ema: pass the keywords adamax\(\)"
    ):
        module.finalize_variable_values(p, with_ema, learning_rate=0.1)
    without = module.adamax(learning_rate=0.1).init(p)
    with pytest.raises(ValueError, match="keeps no 'ema'"):
        module.finalize_variable_values(p, without, learning_rate=0.1, use_ema=True)
    assert module.finalize_variable_values(p, with_ema, learning_rate=0.1, use_ema=True)[0].shape == (3,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_that_are_off_store_nothing(backend):
    """No EMA or accumulator state unless the option is on (one step: NumPy and JAX make the state in
    init, torch at the first step)."""
    params0, grads = problem(1)
    if backend == "jax":  # its state is all made by init: no update (and no jit compile) is needed
        import jax.numpy as jnp

        import optforge.generated.jax as gen

        def stepped(backend, rule, cfg, params0, grads):
            state = getattr(gen, rule.module)(**cfg).init([jnp.asarray(p) for p in params0])
            return None, {"ema": state.ema, "grad_accumulator": state.grad_accumulator}

    else:
        stepped = run
    for rule in RULES.values():
        cfg = dict(rule.configs["default"])
        _, state = stepped(backend, rule, cfg, params0, grads)
        assert state["ema"] is None and state["grad_accumulator"] is None, f"{rule.name} stores option state"
        _, state = stepped(
            backend, rule, {**cfg, "use_ema": True, "gradient_accumulation_steps": 2}, params0, grads
        )
        assert state["ema"] is not None and state["grad_accumulator"] is not None


def test_ema_overwrite_frequency_zero_means_never():
    """Keras's backends disagree on 0 (JAX: every step; TF, torch: never); optforge: never, like None."""
    rule = RULES["Adamax"]
    params0, grads = problem(10)
    base = {**BASE["Adamax"], "use_ema": True}
    for backend in BACKENDS:
        zero, _ = run(backend, rule, {**base, "ema_overwrite_frequency": 0}, params0, grads)
        never, _ = run(backend, rule, base, params0, grads)
        every, _ = run(backend, rule, {**base, "ema_overwrite_frequency": 1}, params0, grads)
        assert all(np.array_equal(a, b) for a, b in zip(zero, never))
        assert not all(np.array_equal(a, b) for a, b in zip(zero, every))


# --------------------------------------------------------------------------------------
# rules with their own reductions, with the options: backends agree


#: the rules with their own reductions (a norm per tensor, a sum over all tensors) that show every feature
REDUCING = [r.name for r in MACHINERY if features(r) & REDUCTIONS]


_REDUCING_OPTIONS = {
    "clipnorm_accum_ema": dict(
        clipnorm=0.5, gradient_accumulation_steps=3, use_ema=True, ema_overwrite_frequency=2
    ),
    "global_clipnorm_loss_scale_ema": dict(
        global_clipnorm=1.0, loss_scale_factor=8.0, use_ema=True, ema_momentum=0.5
    ),
    "clipvalue_accum": dict(clipvalue=0.2, gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("rule_name", REDUCING)
@pytest.mark.parametrize(
    "options, dtype, tol",
    # float64 with each option set; float32 with the one that reduces over all tensors (the others' float32
    # runs add only what test_backends_agree's float32 runs check)
    [pytest.param(o, np.float64, 1e-12, id=f"{k}-float64") for k, o in _REDUCING_OPTIONS.items()]
    + [
        pytest.param(
            _REDUCING_OPTIONS["global_clipnorm_loss_scale_ema"],
            np.float32,
            1e-5,
            id="global_clipnorm_loss_scale_ema-float32",
        )
    ],
)
def test_reducing_rules_backends_agree_with_options(rule_name, options, dtype, tol):
    rule = RULES[rule_name]
    cfg = {**rule.configs.get("lr_0.01", rule.configs["default"]), **options}
    params0, grads = problem(60, dtype)
    want, want_state = run("numpy", rule, cfg, params0, grads)
    for backend in ("jax", "torch"):
        got, state = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, tol, f"{backend} params")
        for name, values in want_state.items():
            if values is not None:
                assert_close(state[name], values, tol, f"{backend} state {name}")


def test_own_weight_decay_wins_and_says_so():
    """NovoGrad's weight_decay is its own (coupled, seed page 000): Keras's decoupled option is not added."""
    import optforge.generated.numpy.novograd as module

    rule = RULES["NovoGrad"]
    assert [n for n in rule.hypers if n == "weight_decay"] == ["weight_decay"]
    assert "not Keras's decoupled" in module.NovoGrad.__doc__


# --------------------------------------------------------------------------------------
# torch checkpoints in the middle of an accumulation cycle and with EMA


@pytest.mark.parametrize("rule_name", list(BASE) + ["NovoGrad"])
@pytest.mark.parametrize("split", [4, 5])  # 5: mid-cycle with accumulation over 3 calls
def test_torch_checkpoint_mid_accumulation_with_ema_resumes_exactly(rule_name, split):
    import io

    import torch

    import optforge.generated.torch as gt

    rule = RULES[rule_name]
    kw = {**BASE.get(rule_name, {"learning_rate": 0.01}), "gradient_accumulation_steps": 3, "use_ema": True}
    kw["ema_overwrite_frequency"] = 2
    kw = {("lr" if k == "learning_rate" else k): v for k, v in kw.items()}
    params0, grads = problem(13)

    def fresh():
        params = [torch.tensor(p, requires_grad=True) for p in params0]
        return params, getattr(gt, rule.name)(params, **kw)

    def steps(params, opt, gs):
        for g in gs:
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()

    straight, opt = fresh()
    steps(straight, opt, grads)

    first, opt = fresh()
    steps(first, opt, grads[:split])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in first], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed, opt2 = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, saved["params"]):
            p.copy_(q)
    opt2.load_state_dict(saved["opt"])
    steps(resumed, opt2, grads[split:])
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)
    state = opt2.state[resumed[0]]
    assert "grad_accumulator" in state and "ema" in state
