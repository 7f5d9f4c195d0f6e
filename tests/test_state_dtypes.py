"""A state stored in a dtype of its own: ``Rule.state(..., dtype="mu_dtype")``, optax's ``mu_dtype`` (and
``accumulator_dtype``). The step computes with the stored value, the update reads the new value before it is
rounded, and the stored state is rounded to its dtype (``compiler/passes/stored_dtype.py`` for the in-place
backends). Every rule that declares such a state is run against its optax reference given the same keyword:
float64 parameters with a float32 state to 1e-12 (a state rounded too early, as NumPy and torch did before
the pass, is 1e-7 off), float32 parameters with a float16 state to float32's tolerance."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from cases import RULES
from drivers import BACKENDS, assert_close, rel_error, run
from references import library_reference
from test_reference_libraries import library_problem, library_run

from optforge.compiler.dsl import Rule, g, tensor_sum, w
from optforge.compiler.errors import RuleError
from optforge.compiler.pipeline import compile_rule


def dtype_rules():
    return [r for r in RULES.values() if r.dtype_keywords]


def dtype_cases():
    return [
        pytest.param(rule, name, id=f"{rule.name}-{name}") for rule in dtype_rules() for name in rule.configs
    ]


def spelled(backend: str, dtype: str):
    """``dtype`` as the backend's users write it."""
    if backend == "torch":
        import torch

        return getattr(torch, dtype)
    if backend == "jax":
        import jax.numpy as jnp

        return getattr(jnp, dtype)
    return np.dtype(dtype)


def with_dtypes(rule, cfg: dict, backend: str, dtype: str) -> dict:
    return {**cfg, **{k: spelled(backend, dtype) for k in rule.dtype_keywords}}


def worst(got: list, want: list) -> float:
    """The largest relative error over the tensors."""
    return max(rel_error(a, b) for a, b in zip(got, want))


def stored(rule) -> set[str]:
    return {s.name for s in rule.states.values() if s.dtype}


def test_the_registry_has_rules_with_a_state_dtype():
    """optax's adam, adamw, nadam, nadamw, amsgrad, lion, sgd and contrib.muon take one (the list is the
    registry's: this test only says it is not empty)."""
    assert dtype_rules(), "no rule declares state(..., dtype=)"


@pytest.mark.parametrize("rule", [pytest.param(r, id=r.name) for r in dtype_rules()])
def test_the_keyword_is_the_references(rule):
    """The keyword is the reference's own (optax.adam's mu_dtype, optax.sgd's accumulator_dtype)."""
    import inspect

    library, make = library_reference(rule)
    assert library == "optax", f"{rule.name}: a state dtype keyword is optax's convention"
    for keyword in rule.dtype_keywords:
        assert keyword in inspect.signature(make).parameters, f"{make.__qualname__} takes no {keyword!r}"


@pytest.mark.parametrize("rule, name", dtype_cases())
def test_float64_parameters_with_a_float32_state_equal_optax(rule, name):
    """Every backend to 1e-12 of optax with the keyword at float32 (50 steps, ranks 0-3, gradient scales
    1e-4 to 1e3); the state is stored in float32, the others in float64."""
    import jax.numpy as jnp

    cfg = rule.configs[name]
    params0, grads = library_problem(np.float64)
    want = library_run(rule, {**cfg, **{k: jnp.float32 for k in rule.dtype_keywords}}, params0, grads, None)
    for backend in BACKENDS:
        got, states = run(backend, rule, with_dtypes(rule, cfg, backend, "float32"), params0, grads)
        assert_close(got, want, 1e-12, f"{backend} vs optax, {', '.join(rule.dtype_keywords)}=float32")
        for state, arrays in states.items():
            if arrays is None or state not in rule.states or rule.states[state].scope == "global":
                continue
            expected = np.float32 if state in stored(rule) else np.float64
            kept = [a for a in arrays if a.size]
            assert all(a.dtype == expected for a in kept), f"{backend}: {state} in {[a.dtype for a in kept]}"


@pytest.mark.parametrize("rule", [pytest.param(r, id=r.name) for r in dtype_rules()])
def test_float32_parameters_with_a_float16_state_follow_optax(rule):
    """float16 is a dtype every framework computes with natively (bfloat16 is not NumPy's): each backend
    within float32's tolerance of optax, where a state kept in float32 is thousands of times further off."""
    import jax.numpy as jnp

    cfg = rule.configs[max(rule.configs, key=lambda name: len(rule.configs[name]))]  # its options on
    params0, grads = library_problem(np.float32)
    # float16's range: gradients up to 1e2, so that a moment stays finite
    grads = [[np.asarray(x / max(1.0, np.abs(x).max() / 1e2), np.float32) for x in g_] for g_ in grads]
    want = library_run(rule, {**cfg, **{k: jnp.float16 for k in rule.dtype_keywords}}, params0, grads, None)
    for backend in BACKENDS:
        got, states = run(backend, rule, with_dtypes(rule, cfg, backend, "float16"), params0, grads)
        error = worst(got, want)
        assert error <= 1e-5, f"{backend}: {error:.3g} from optax with a float16 state"
        for name in stored(rule):
            kept = [a for a in states[name] if a.size]
            assert kept and all(a.dtype == np.float16 for a in kept), f"{backend}: {name} {kept[0].dtype}"
    # the rounding shows in the parameters (not in Lion's: the sign of the moment is all it reads)
    wide = library_run(rule, cfg, params0, grads, None)
    print(f"{rule.name}: float16 state vs float32 state: {worst(wide, want):.3g}")


def test_without_the_pass_numpy_and_torch_round_the_state_too_early():
    """The pass is what makes the in-place backends agree: its input program, printed by hand, reads the
    rounded moment (the update of optax.adam with mu_dtype reads the unrounded one)."""
    rule = RULES["OptaxAdam"]
    from optforge.compiler.passes.stored_dtype import hold

    program = compile_rule(rule)
    body = program.cases[-1].body
    assert any(a.target == "new_mu" for a in body), "the compiled program holds mu's new value"
    assert body[-1].target == "mu" and str(body[-1].expr).startswith("new_mu")
    reads = [a for a in body if a.target == "mu_hat"]
    assert all("new_mu" in str(a.expr) for a in reads), "the bias correction reads the held value"
    # a rule whose state's new value nothing reads later is printed as before: nothing held
    plain = Rule("HeldNot", title="t")
    plain.learning_rate(0.1)
    m = plain.state("m", 0, "m", dtype="m_dtype")
    plain.assign(w, w - 0.1 * (g + m), "step")  # reads the stored m, before it is written
    plain.assign(m, m + g, "sum")
    assert not any(a.target.startswith("new_") for c in compile_rule(plain).cases for a in c.body)
    assert hold((), {"m"}) == ()


@pytest.mark.parametrize("fused", [True, False])
def test_torch_state_dict_and_pickle_keep_the_chosen_dtype(fused):
    """A float16 moment stays float16 through state_dict (torch would cast it to the parameter's dtype),
    deepcopy and pickle, and the resumed run equals the uninterrupted one bit for bit."""
    import torch

    import optforge.generated.torch as gt

    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(6)]

    def make(ps):
        return gt.OptaxAdam(ps, lr=0.01, mu_dtype=torch.float16, fused=fused)

    def steps(opt, ps, gs):
        for g_ in gs:
            for p, x in zip(ps, g_):
                p.grad = x.clone()
            opt.step()

    opt = make(params)
    steps(opt, params, grads[:3])
    saved, weights = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    assert {opt.state[p]["mu"].dtype for p in params} == {torch.float16}
    assert {opt.state[p]["nu"].dtype for p in params} == {torch.float32}
    steps(opt, params, grads[3:])
    resumed = [w_.clone().requires_grad_() for w_ in weights]
    again = make(resumed)
    again.load_state_dict(saved)
    assert {again.state[p]["mu"].dtype for p in resumed} == {torch.float16}
    steps(again, resumed, grads[3:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.dtypes == {"mu_dtype": torch.float16}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dtype_that_is_not_floating_point_is_refused(backend):
    """What was expected, what was received, which keyword."""
    rule = RULES["OptaxAdam"]
    bad = {"numpy": np.int32, "jax": "int32", "torch": "float16"}[backend]
    with pytest.raises(TypeError, match=r"`mu_dtype` must be None or a floating.*mu_dtype="):
        if backend == "numpy":
            import optforge.generated.numpy as gn

            gn.OptaxAdam(0.1, mu_dtype=bad)
        elif backend == "jax":
            import optforge.generated.jax as gj

            gj.optax_adam(0.1, mu_dtype=bad)
        else:
            import torch

            import optforge.generated.torch as gt

            gt.OptaxAdam([torch.zeros(2, requires_grad=True)], lr=0.1, mu_dtype=bad)
    assert "mu_dtype" in rule.dtype_keywords


def test_the_kernels_take_a_state_of_the_parameters_dtype_and_leave_another_to_the_plain_path(
    fused_tensors,
):
    """NumPy fused: a float32 moment of float32 parameters runs in the kernels, equal to the plain path; a
    float16 moment is not the kernels' (one dtype per launch): the plain path runs it, the same results."""
    import optforge.generated.numpy as gn

    rng = np.random.default_rng(0)
    params0 = [rng.normal(size=s).astype(np.float32) for s in [(4, 3), (5,)]]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in params0] for _ in range(5)]
    for dtype, taken in (("float32", 10), ("float16", 0)):
        results = []
        for fused in (True, False):
            opt = gn.OptaxAdam(0.01, mu_dtype=dtype, fused=fused)
            ps = [p.copy() for p in params0]
            st = opt.init(ps)
            before = fused_tensors[0]
            for g_ in grads:
                ps, st = opt.step(ps, [x.copy() for x in g_], st)
            if fused:
                assert fused_tensors[0] - before == taken, dtype
            results.append(ps)
        assert_close(results[0], results[1], 1e-6, f"fused vs plain, mu_dtype={dtype}")


def test_a_rule_with_a_state_dtype_the_user_writes():
    """The DSL's checks: a per-tensor state with a dtype, the keyword named as the state, a keyword that
    is a hyperparameter's name; two states may share one keyword."""
    rule = Rule("Shared", title="t")
    rule.learning_rate(0.1)
    a = rule.state("a", 0, "a", dtype="moments_dtype")
    b = rule.state("b", 0, "b", dtype="moments_dtype")
    rule.assign(a, a + g, "a")
    rule.assign(b, b + g**2, "b")
    rule.assign(w, w - 0.1 * a / (1 + b), "step")
    assert rule.dtype_keywords == ["moments_dtype"]
    compile_rule(rule)

    with pytest.raises(RuleError, match="names the state itself"):
        Rule("Own", title="t").state("m", 0, "m", dtype="m")
    clash = Rule("Clash", title="t")
    clash.hyper("beta", 0.9, "[0, 1)", "b")
    with pytest.raises(RuleError, match="declared twice"):
        clash.state("m", 0, "m", dtype="beta")
    norm = Rule("PerTensor", title="t")
    norm.learning_rate(0.1)
    v = norm.state("v", 0, "v", dtype="v_dtype")
    norm.assign(v, v + tensor_sum(g**2), "v")
    norm.assign(w, w - 0.1 * g / (1 + v), "step")
    with pytest.raises(RuleError, match="shaped like the parameter"):
        compile_rule(norm)
