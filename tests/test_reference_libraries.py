"""Generated optimizers against the real libraries: Keras 3 (JAX backend, float64), torch.optim, optax.

Rules named after their library (``TorchAdam``, ``OptaxAdam``: see references.py) are run against it in every
configuration, with a constant learning rate and a schedule, in float64 (1e-12) and then float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import RULES, kernel_takes, kernels, rule_configs
from drivers import BACKENDS, assert_close, loss_kwargs, problem, run, varying_lr
from references import (
    KERAS_RULES,
    OTHER_ORACLES,
    keras_run,
    keras_schedule,
    library_kwargs,
    library_reference,
    optax_transform,
    torch_optimizer,
)

STEPS = 100


def defaults(rule) -> dict:
    return {n: h.default for n, h in rule.hypers.items()}


def test_every_rule_has_a_reference():
    """A new rule must say which library it is checked against (add it to references.py)."""
    for rule in RULES.values():
        assert rule.name in KERAS_RULES | OTHER_ORACLES or library_reference(rule) is not None, (
            f"{rule.name} ({rule.file}) has no reference: expected a name Torch<Name> or Optax<Name> (the"
            " library's optimizer), or an entry in tests/references.py"
        )


def keras_configs():
    return [p for p in rule_configs() if p.values[0].name in KERAS_RULES]


@pytest.mark.parametrize("rule, name, cfg", keras_configs())
def test_keras(rule, name, cfg):
    """Each backend's parameters equal Keras's to 1e-12 (float64), and their states equal NumPy's (Keras's
    are not read: for these rules this stands for test_backends_agree.py's float64 comparison)."""
    params0, grads = problem(STEPS)
    lr = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    want = keras_run(rule.name, cfg, params0, grads, lr)
    states = {}
    for backend in BACKENDS:
        got, states[backend] = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs keras")
    ref = states[BACKENDS[0]]
    for backend in BACKENDS[1:]:
        for n in ref:
            assert (states[backend][n] is None) == (ref[n] is None), (
                f"{backend}: state {n} exists in one backend only"
            )
            if ref[n] is not None:
                assert_close(states[backend][n], ref[n], 1e-12, f"{backend} state {n} vs {BACKENDS[0]}'s")


@pytest.mark.parametrize("rule, name, cfg", [p for p in keras_configs() if p.values[1] == "default"])
def test_keras_with_a_learning_rate_that_changes_every_step(rule, name, cfg):
    # each Keras rule's default: the rate's path is the same whatever the configuration (test_keras: each)
    base = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    params0, grads = problem(STEPS)
    want = keras_run(rule.name, cfg, params0, grads, keras_schedule(varying_lr(base)))
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads, varying_lr(base))
        assert_close(got, want, 1e-12, f"{backend} vs keras (varying lr)")


def torch_cases():
    import torch

    out = []
    for p in rule_configs():
        rule, name, cfg = p.values
        if torch_optimizer(rule.name, cfg, [torch.zeros(1)], defaults(rule)) is not None:
            out.append(p)
    return out


@pytest.mark.parametrize("rule, name, cfg", torch_cases())
def test_torch_optim_where_semantics_coincide(rule, name, cfg):
    import torch

    params0, grads = problem(STEPS)
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps step counters and NAdam's mu_product in this dtype
    try:
        opt = torch_optimizer(rule.name, cfg, params, defaults(rule))
        for g in grads:
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()
    finally:
        torch.set_default_dtype(previous)
    want = [p.detach().numpy() for p in params]
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs torch.optim.{type(opt).__name__}")


def optax_cases():
    return [
        p
        for p in rule_configs()
        if optax_transform(p.values[0].name, p.values[2], defaults(p.values[0])) is not None
    ]


@pytest.mark.parametrize("rule, name, cfg", optax_cases())
def test_optax_where_semantics_coincide(rule, name, cfg):
    import jax
    import jax.numpy as jnp
    import optax

    params0, grads = problem(STEPS)
    tx = optax_transform(rule.name, cfg, defaults(rule))
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    update = jax.jit(tx.update)  # as optax is run (eagerly, its steps took most of this test's time)
    for g in grads:
        updates, state = update([jnp.asarray(x) for x in g], state, params)
        params = optax.apply_updates(params, updates)
    want = [np.asarray(p) for p in params]
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs optax")


# --------------------------------------------------------------------------------------------------
# Rules named after their library: torch.optim.<Name> and optax.<name>, found from the rule's name

LIBRARY_STEPS = 50
# ranks 0 to 3, gradient scales 1e-4 to 1e3; the last tensor's first gradient is all zeros
LIBRARY_SHAPES = [(), (7,), (5, 3), (2, 3, 4)]
LIBRARY_SCALES = [1e-4, 1.0, 1e3, 1e-2]
FLOAT32_TOLERANCE = 1e-5


def library_problem(dtype):
    return problem(LIBRARY_STEPS, dtype, seed=1, shapes=LIBRARY_SHAPES, scales=LIBRARY_SCALES)


def library_cases():
    return [p for p in rule_configs() if library_reference(p.values[0]) is not None]


def scheduled_config(rule) -> str:
    """The configuration a varying rate is run on: the one that sets the most hyperparameters (its flags and
    options on, by the registry's convention). The rate reaches the rule as one number per step whatever
    the configuration, so one of them shows how the rule reads it (a decay of the rate, a rate read once,
    a rate kept as state), and the constant rate runs on every configuration."""
    return max(rule.configs, key=lambda name: len(rule.configs[name]))


def library_runs():
    """(rule, name, cfg, scheduled): every configuration at a constant rate, one at a varying rate."""
    return [
        pytest.param(*p.values, scheduled, id=f"{p.id}-{'schedule' if scheduled else 'constant_lr'}")
        for p in library_cases()
        for scheduled in (False, True)
        if not scheduled or p.values[1] == scheduled_config(p.values[0])
    ]


def library_rules():
    return [pytest.param(r, id=r.name) for r in RULES.values() if library_reference(r) is not None]


def library_run(rule, cfg, params0, grads, schedule):
    """The reference library's parameters after the steps (schedule: None for the constant learning rate)."""
    library, make = library_reference(rule)
    base = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    if library == "torch":
        import torch

        params = [torch.tensor(p, requires_grad=True) for p in params0]
        opt = make(params, **library_kwargs(rule, cfg, base))
        for k, g in enumerate(grads):
            if schedule is not None:
                for group in opt.param_groups:
                    group["lr"] = schedule(k)
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()
        return [p.detach().numpy() for p in params]
    import jax
    import jax.numpy as jnp
    import optax

    if schedule is not None and not takes_schedule(make):  # optax.rprop: the first step size, a number
        schedule = schedule(0)  # what a rule that reads the rate at its first step sees of a schedule
    tx = make(**library_kwargs(rule, cfg, schedule or base))
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    update = jax.jit(tx.update)  # as optax is run (eager: 50 steps took 1.9 s, most of this test)
    for k, g in enumerate(grads):
        updates, state = update([jnp.asarray(x) for x in g], state, params, **loss_kwargs(rule, k))
        params = optax.apply_updates(params, updates)
    return [np.asarray(p) for p in params]


def takes_schedule(make) -> bool:
    """Whether an optax optimizer takes a schedule as its learning rate (its annotation says
    ``ScalarOrSchedule``, a union with a Callable; optax.rprop's says ``Scalar``)."""
    import inspect

    annotation = inspect.signature(make).parameters["learning_rate"].annotation
    return annotation is inspect.Parameter.empty or "Callable" in str(annotation)  # a reference written here


@pytest.mark.parametrize("rule, name, cfg, scheduled", library_runs())
def test_library_rule_matches_its_library(rule, name, cfg, scheduled, fused_tensors):
    """float64 to 1e-12 in NumPy, JAX and torch, each configuration at a constant rate and one
    (``scheduled_config``) at a varying rate; with the constant learning rate also the fused kernels (NumPy,
    torch; a schedule reaches them as one more scalar; every tensor taken), and on the default configuration
    float32 to FLOAT32_TOLERANCE."""
    library, _ = library_reference(rule)
    base = cfg.get("learning_rate", rule.hypers["learning_rate"].default)
    schedule = varying_lr(base) if scheduled else None
    params0, grads = library_problem(np.float64)
    want = library_run(rule, cfg, params0, grads, schedule)
    fused = not scheduled and kernels(rule)  # a rule without kernels: test_a_rule_without_kernels_says_why
    paths = [(b, None) for b in BACKENDS] + ([("numpy", True), ("torch", True)] if fused else [])
    for backend, fused in paths:
        before = fused_tensors[0]
        got, _ = run(backend, rule, cfg, params0, grads, schedule, fused=fused)
        if fused:
            taken = fused_tensors[0] - before
            takes = sum(
                kernel_takes(rule, p.shape, cfg) for p in params0
            )  # every tensor, or the element-wise
            assert taken == LIBRARY_STEPS * takes, f"{backend}: the fused path took {taken} tensors"
        assert_close(got, want, 1e-12, f"{backend}{' fused' if fused else ''} vs {library} (float64)")
    if scheduled or name != "default":  # float32: each rule's default (as test_backends_agree.py)
        return
    params0, grads = library_problem(np.float32)
    want = library_run(rule, cfg, params0, grads, schedule)
    for backend in BACKENDS:
        got, _ = run(backend, rule, cfg, params0, grads, schedule)
        assert got[0].dtype == np.float32, f"{backend}: float32 parameters came back as {got[0].dtype}"
        assert_close(got, want, FLOAT32_TOLERANCE, f"{backend} vs {library} (float32)")


@pytest.mark.parametrize("rule", library_rules())
def test_library_rule_has_its_references_names_and_defaults(rule):
    """Every hyperparameter the reference takes has our name (torch's betas: beta1, beta2) and default."""
    import inspect

    library, make = library_reference(rule)
    signature = inspect.signature(make).parameters
    ours = {n: h.default for n, h in rule.hypers.items()}
    theirs = library_kwargs(rule, {}, rule.hypers["learning_rate"].default)
    for name, value in theirs.items():
        assert name in signature, f"{rule.name}: {name!r} is not a keyword of {make.__qualname__}"
        default = signature[name].default
        expected = None if default is inspect.Parameter.empty else default
        assert value == expected, (
            f"{rule.name}: default of {name!r} expected {expected!r} ({make.__qualname__}), received {value!r}"
        )
    assert set(ours) >= {"learning_rate"}


def test_optax_adafactor_differs_from_optax_by_xla_float32_power():
    """optax.adafactor computes its decay ``1 - t^-c`` in float32 with XLA's power, which is not always the
    nearest float32 (1 ulp apart at 8 of the first 200 steps on this CPU); OptaxAdafactor rounds to the
    nearest (``float32()``). The float64 comparisons above replace optax's power by the nearest float32
    (``references.nearest_float32_decay``) and agree to 1e-12; against optax.adafactor itself every
    configuration stays within 1e-5 after 50 steps (measured: at most 2.5e-6), and the decays themselves
    differ by at most one float32 ulp."""
    import jax
    import jax.numpy as jnp
    import optax
    from optax._src import factorized
    from references import nearest_float32_decay

    rule = RULES["OptaxAdafactor"]
    steps = jnp.arange(200)
    ours, theirs = np.asarray(nearest_float32_decay(steps)), np.asarray(factorized._decay_rate_pow(steps))
    assert np.max(np.abs(ours - theirs)) <= np.finfo(np.float32).eps and np.any(ours != theirs)
    params0, grads = library_problem(np.float64)
    for name, cfg in rule.configs.items():
        tx = optax.adafactor(**library_kwargs(rule, cfg, cfg["learning_rate"]))
        params = [jnp.asarray(p) for p in params0]
        state = tx.init(params)
        update = jax.jit(tx.update)  # eager: 4 s for the four configurations
        for g in grads:
            updates, state = update([jnp.asarray(x) for x in g], state, params)
            params = optax.apply_updates(params, updates)
        got, _ = run("numpy", rule, cfg, params0, grads)
        assert_close(got, [np.asarray(p) for p in params], 1e-5, f"{name}: numpy vs optax.adafactor")


def test_torch_muon_differs_from_torch_optim_muon_by_bfloat16_rounding():
    """torch.optim.Muon computes its Newton-Schulz iteration in bfloat16, TorchMuon in the parameter's dtype
    (float32 here): one step's update of a tall, a wide and a square matrix differs by bfloat16's rounding,
    measured 1.4e-2 to 1.6e-2 of the update's norm, and by nothing else (the float64 comparisons above make
    torch's cast an identity and agree to 1e-12)."""
    import torch

    import optforge.generated.torch as gen
    from optforge.benchmarks.configs import MuonWithAdamW

    rng = np.random.default_rng(0)
    for shape in [(64, 32), (32, 64), (50, 50)]:
        p0 = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        grad = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        steps = []
        for make in (
            lambda p: gen.TorchMuon([p], lr=0.02),
            lambda p: MuonWithAdamW([p], lr=0.02, bfloat16=True),
        ):
            p = torch.nn.Parameter(p0.clone())
            p.grad = grad.clone()
            make(p).step()
            steps.append(p.detach() - p0)
        ours, theirs = steps
        assert float((ours - theirs).norm() / theirs.norm()) < 3e-2, shape
