"""The compiler: broken rules are errors naming the rule and the equation; variants; the increment form."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close, problem
from rulekit import load, steps

from optforge.compiler.dsl import Eq, Rule, clip, float32, g, maximum, sqrt, t, tensor_sum, w, where
from optforge.compiler.errors import BackendError, RuleError
from optforge.compiler.ir import Form
from optforge.compiler.pipeline import compile_rule
from optforge.rules import get


def base_rule(name="Broken"):
    r = Rule(name, title="a rule for tests")
    lr = r.learning_rate(0.1)
    return r, lr


# --------------------------------------------------------------------------------------
# broken rules: (what, how to build it, expected fragments of the message)


def undefined_symbol():
    r, lr = base_rule()
    r.assign(w, w - lr * sp.Symbol("q") * g, "step")
    return r


def state_never_updated():
    r, lr = base_rule()
    m = r.state("m", 0, "momentum")
    r.assign(w, w - lr * (g + m))
    return r


def default_outside_range():
    r, _ = base_rule()
    r.hyper("beta", 1.5, "[0, 1)", "decay")
    return r


def flag_used_as_number():
    r, lr = base_rule()
    f = r.flag("fancy", False, "a flag")
    r.assign(w, w - lr * f * g)
    return r


def dead_state():
    r, lr = base_rule()
    m = r.state("m", 0, "never read")
    r.assign(m, m + g)
    r.assign(w, w - lr * g)
    return r


def state_value_lost():
    r, lr = base_rule()
    m = r.state("m", 0, "momentum")
    r.assign(m, 0.9 * m + g, "first")
    r.assign(m, g, "second")
    r.assign(w, w - lr * m)
    return r


def per_tensor_state_given_elements():
    r, lr = base_rule()
    v = r.state("v", 0, "per-tensor second moment", scope="tensor")
    r.assign(v, 0.9 * v + g**2, "second moment")
    r.assign(w, w - lr * g / sqrt(v + 1))
    return r


def assign_to_hyperparameter():
    r, lr = base_rule()
    b = r.hyper("beta", 0.5, "[0, 1]", "decay")
    r.assign(b, b * 2)
    r.assign(w, w - lr * g)
    return r


def reserved_name():
    r, _ = base_rule()
    r.state("torch", 0, "shadows the backend")
    return r


def condition_on_data():
    r, lr = base_rule()
    r.assign(w, w - lr * g, when=sp.Gt(t, 1))
    return r


def no_learning_rate():
    r = Rule("Broken", title="x")
    r.assign(w, w - g)
    return r


def parameter_never_updated():
    r, lr = base_rule()
    m = r.state("m", 0, "momentum")
    r.assign(m, m + lr * g)
    return r


def used_before_defined():
    r, lr = base_rule()
    r.assign(w, w - lr * sp.Symbol("d"))
    r.let("d", g * 2)
    return r


BROKEN = [
    (undefined_symbol, ["rule 'Broken'", "equation 1", "symbol 'q' is not defined", "how to fix"]),
    (state_never_updated, ["state 'm' is never updated", "equation 1 `"]),
    (default_outside_range, ["default of 'beta' is 1.5, outside its range [0, 1)"]),
    (flag_used_as_number, ["equation 1", "flag 'fancy' is used as a number", "where(fancy, a, b)"]),
    (dead_state, ["equation 1", "state 'm' is updated but never influences the parameter update"]),
    (state_value_lost, ["equation 1", "'m' is assigned here and again by equation 2"]),
    (per_tensor_state_given_elements, ["equation 1", "state 'v' is declared per tensor", "per element"]),
    (assign_to_hyperparameter, ["equation 1", "'beta' cannot be assigned: it is a hyperparameter"]),
    (reserved_name, ["state name 'torch' is reserved"]),
    (condition_on_data, ["equation 1", "a condition may read only flags and hyperparameters"]),
    (no_learning_rate, ["declares no learning rate"]),
    (parameter_never_updated, ["the parameter w is never updated"]),
    (
        used_before_defined,
        ["equation 1", "symbol 'd' is not defined yet (it is defined by a later equation)"],
    ),
]


def division_by_a_hyperparameter_that_may_be_zero():
    r, lr = base_rule()
    eps = r.hyper("eps", 1e-8, "[0, inf)", "a constant")
    r.assign(w, w - lr * g / eps)
    return r


def cycle_between_definitions():
    r, lr = base_rule()
    r.let("a", sp.Symbol("b") + g)
    r.let("b", sp.Symbol("a") * 2)
    r.assign(w, w - lr * sp.Symbol("b"))
    return r


def missing_default():
    r, _ = base_rule()
    r.hyper("beta", None, "[0, 1)", "decay")
    return r


def unreadable_range():
    r, _ = base_rule()
    r.hyper("beta", 0.5, "[0; 1)", "decay")
    return r


def state_outside_its_condition():
    r, lr = base_rule()
    on = r.flag("on", False, "keep an average")
    avg = r.state("avg", 0, "average", exists_if=on)
    r.assign(avg, 0.5 * avg + 0.5 * w)  # not guarded by `on`
    r.assign(w, w - lr * g - lr * where(on, avg, 0))
    return r


def declared_twice():
    r, _ = base_rule()
    r.hyper("beta", 0.5, "[0, 1]", "decay")
    r.state("beta", 0, "again")
    return r


def reduction_of_a_reduction():
    r, lr = base_rule()
    r.assign(w, w - lr * g * tensor_sum(g * tensor_sum(g)))
    return r


def condition_on_the_learning_rate():
    r, lr = base_rule()
    r.assign(w, w - lr * g, when=sp.Gt(lr, 0.5))
    return r


def assign_to_the_step():
    r, lr = base_rule()
    r.assign(t, t + 1)
    r.assign(w, w - lr * g)
    return r


def flag_with_a_number_default():
    r, _ = base_rule()
    r.flag("nesterov", 0, "Nesterov momentum")
    return r


def initial_value_reads_the_gradient():
    r, lr = base_rule()
    m = r.state("m", g, "momentum")
    r.assign(m, m + g)
    r.assign(w, w - lr * m)
    return r


def step_defined_late():
    r, lr = base_rule()
    r.assign(w, w - lr * g)
    r.equations.append(type(r.equations[0])("t", sp.Symbol("n") + 2, "step", sp.true, "x.py:1", "let"))
    return r


def reserved_name_for_a_gradient():
    r, _ = base_rule()
    r.state("g", 0, "shadows the gradient")
    return r


def bad_scope():
    r, _ = base_rule()
    r.state("v", 0, "second moment", scope="layer")
    return r


BROKEN += [
    (
        division_by_a_hyperparameter_that_may_be_zero,
        ["equation 1", "divides by 'eps', whose range [0, inf) includes 0"],
    ),
    (cycle_between_definitions, ["equation 1", "symbol 'b' is not defined yet"]),
    (missing_default, ["hyperparameter 'beta' needs a number as default, received None"]),
    (unreadable_range, ["the range of 'beta' is not readable"]),
    (state_outside_its_condition, ["equation 1", "state 'avg' exists only if on"]),
    (declared_twice, ["'beta' is declared twice"]),
    (reduction_of_a_reduction, ["equation 1", "a reduction of a reduction"]),
    (condition_on_the_learning_rate, ["equation 1", "a condition may read only flags and hyperparameters"]),
    (assign_to_the_step, ["equation 1", "the step t may only be redefined by the first equation"]),
    (flag_with_a_number_default, ["flag 'nesterov' needs a bool default, received 0"]),
    (initial_value_reads_the_gradient, ["the initial value of state 'm' is `g`"]),
    (step_defined_late, ["equation 2", "the step t may only be redefined by the first equation"]),
    (reserved_name_for_a_gradient, ["state name 'g' is reserved"]),
    (bad_scope, ["scope must be 'element', 'tensor' or 'global', received 'layer'"]),
]


def test_the_catalogue_has_at_least_twenty_kinds_of_mistakes():
    assert len(BROKEN) >= 20


def test_every_rule_error_says_what_to_do():
    for make, _ in BROKEN:
        with pytest.raises(RuleError) as info:
            compile_rule(make())
        assert "how to fix:" in str(info.value), f"{make.__name__}: no advice in\n{info.value}"


def test_a_function_one_backend_lacks_is_an_error_for_that_backend_only():
    from optforge.backends import backends
    from optforge.compiler.dsl import erf

    r, lr = base_rule()
    r.assign(w, w - lr * erf(g))
    numpy = backends()["numpy"]
    with pytest.raises(BackendError) as info:
        numpy.render(numpy.compile(r))
    assert "the numpy backend cannot print `erf: erf(g)`" in str(info.value) and "equation 1" in str(
        info.value
    )
    for name in ("jax", "torch"):
        backend = backends()[name]
        assert "erf(" in backend.render(backend.compile(r))


@pytest.mark.parametrize("make, fragments", BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_broken_rule_is_a_compile_error(make, fragments):
    with pytest.raises(RuleError) as info:
        compile_rule(make())
    message = str(info.value)
    assert message.startswith("rule 'Broken'"), message
    for f in fragments:
        assert f in message, f"{f!r} not in:\n{message}"


def test_error_names_the_file_and_line_of_the_equation():
    with pytest.raises(RuleError) as info:
        compile_rule(undefined_symbol())
    assert "test_compiler.py:" in str(info.value)


def test_unsupported_construct_names_the_node_and_the_backend(tmp_path):
    r, lr = base_rule()
    r.assign(w, w - lr * sp.sin(g))
    with pytest.raises(BackendError) as info:
        load(r, tmp_path)
    message = str(info.value)
    assert (
        "backend cannot print `sin: sin(g)`" in message
        and "equation 1" in message
        and "rule 'Broken'" in message
    )


def test_every_registered_rule_passes_the_verifier_between_passes():
    """The programs every test compiles (``cases.compiled``: with the verifier after each pass), in both forms."""
    from cases import CHECK_BETWEEN_PASSES, RULES, compiled

    assert CHECK_BETWEEN_PASSES
    for rule in RULES.values():
        for form in Form:
            program = compiled(rule, form)
            assert program.passes[-3:] == ("schedule", "guard_lets", "guard_shape_values")
            assert program.form == form


# --------------------------------------------------------------------------------------
# variants and new rules need no change in compiler/ or backends/


def test_variant_in_a_few_lines_matches_torch_adamax(tmp_path):
    """torch's Adamax is Keras's with epsilon inside the max: a variant of two replaced equations."""
    import torch

    from optforge.rules.adamax import RULE as base  # the rule as written (the registry adds Keras's options)

    lr, beta_1, beta_2, eps = (sp.Symbol(n) for n in ("learning_rate", "beta_1", "beta_2", "epsilon"))
    m, u = sp.Symbol("m"), sp.Symbol("u")
    variant = base.derive("AdamaxTorch", title="Adamax as torch.optim.Adamax")
    variant.replace(u, maximum(beta_2 * u, abs(g) + eps))
    variant.replace(w, w - lr / (1 - beta_1**t) * m / u)
    variant.set_default("epsilon", 1e-8)
    assert variant.base == "Adamax" and len(base.equations) == len(variant.equations)
    assert base.equations[1].expr != variant.equations[1].expr, "the base rule must not change"

    mods = load(variant, tmp_path)
    params0, grads = problem(50)
    tp = [torch.tensor(p, requires_grad=True) for p in params0]
    ref = torch.optim.Adamax(tp, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for gs in grads:
        for p, x in zip(tp, gs):
            p.grad = torch.tensor(x)
        ref.step()
    want = [p.detach().numpy() for p in tp]

    opt = mods["numpy"].AdamaxTorch(learning_rate=0.01)
    params = [p.copy() for p in params0]
    state = opt.init(params)
    for gs in grads:
        params, state = opt.step(params, gs, state)
    assert_close(params, want, 1e-12, "numpy variant vs torch.optim.Adamax")

    tp2 = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = mods["torch"].AdamaxTorch(tp2, lr=0.01)
    for gs in grads:
        for p, x in zip(tp2, gs):
            p.grad = torch.tensor(x)
        opt.step()
    assert_close([p.detach().numpy() for p in tp2], want, 1e-12, "torch variant vs torch.optim.Adamax")


def test_a_temporary_is_named_once_in_the_whole_program(tmp_path):
    """RAdam's shape (found writing optax.radam): each case's common subexpressions were numbered from
    tmp0, so ``tmp1`` was ``1 - b2`` (a constant) in one case and ``b2**t`` (per step) in the other, and
    the scopes and array-ness kept by name mixed them: a CompilerBug ("wider than its scope") at compile
    time. Both flag values now compile and equal a transcription in NumPy, JAX and torch."""
    r = Rule("RhoInf", title="a constant and a per-step value from the same hyperparameter")
    lr = r.learning_rate(0.1)
    b1 = r.hyper("b1", 0.9, "[0, 1)", "decay")
    b2 = r.hyper("b2", 0.999, "[0, 1)", "decay")
    nesterov = r.flag("nesterov", False, "look ahead")
    mu = r.state("mu", 0, "first moment")
    nu = r.state("nu", 0, "second moment")
    r.assign(mu, (1 - b1) * g + b1 * mu, "first moment")
    r.assign(nu, (1 - b2) * g**2 + b2 * nu, "second moment")
    rho_inf = r.let("rho_inf", 2 / (1 - b2) - 1, "constant")
    rho = r.let("rho", rho_inf - 2 * t * b2**t / (1 - b2**t), "per step")
    mu_hat = r.let("mu_hat", mu, "first moment")
    r.assign(mu_hat, b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t), "look-ahead", when=nesterov)
    r.assign(w, w - lr * rho * mu_hat / (sqrt(nu) + 1e-8), "update")
    mods = load(r, tmp_path)

    params0, grads = problem(5)
    for look_ahead in (False, True):
        want = [p.copy() for p in params0]
        m = [np.zeros_like(p) for p in params0]
        v = [np.zeros_like(p) for p in params0]
        for k, gs in enumerate(grads, 1):
            for i, x in enumerate(gs):
                m[i] = 0.1 * x + 0.9 * m[i]
                v[i] = 0.001 * x**2 + 0.999 * v[i]
                rho_k = (2 / 0.001 - 1) - 2 * k * 0.999**k / (1 - 0.999**k)
                m_hat = 0.9 * m[i] / (1 - 0.9 ** (k + 1)) + 0.1 * x / (1 - 0.9**k) if look_ahead else m[i]
                want[i] = want[i] - 0.1 * rho_k * m_hat / (np.sqrt(v[i]) + 1e-8)
        for path in ("numpy", "jax", "torch"):
            got = steps(mods, r, params0, grads, path, nesterov=look_ahead)
            assert_close(got, want, 1e-12, f"{path}, nesterov={look_ahead}")


def test_a_value_that_is_a_number_in_one_branch_and_an_array_in_the_other_stays_an_array(tmp_path):
    """``where(t == 1, 0, g - prev)`` (Adan's gradient difference): the first step's branch is the number 0.
    torch's step wrote ``torch.mul(d, c, out=buffer)`` with both operands numbers, which resized the
    scratch buffer to 0-d (a UserWarning, deprecated: an error in a later torch) and back at the next
    step; the number now fills the value's buffer. Warnings are errors here."""
    import warnings

    r = Rule("FirstDifference", title="a gradient difference that is 0 at the first step")
    lr = r.learning_rate(0.1)
    b = r.hyper("b", 0.25, "[0, 1]", "weight of the difference")
    prev = r.state("prev", 0, "the previous gradient")
    d = r.let("d", where(Eq(t, 1), 0, g - prev), "difference")
    r.assign(w, w - lr * (g + (1 - b) * d), "parameter update")
    r.assign(prev, g, "kept")
    mods = load(r, tmp_path)

    params0, grads = problem(4)
    want = [p.copy() for p in params0]
    for k, gs in enumerate(grads, 1):
        for i, x in enumerate(gs):
            diff = 0.0 if k == 1 else x - grads[k - 2][i]
            want[i] = want[i] - 0.1 * (x + 0.75 * diff)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in ("numpy", "torch"):
            assert_close(steps(mods, r, params0, grads, path), want, 1e-12, path)


def test_a_new_rule_with_where_clip_and_sign_runs_in_every_backend(tmp_path):
    """A rule using the element-wise functions, compiled without touching compiler/ or backends/."""
    import jax.numpy as jnp
    import optax
    import torch

    r = Rule("SignClip", title="clipped sign descent with a warm-up")
    lr = r.learning_rate(0.05)
    c = r.hyper("c", 0.5, "(0, inf)", "clip value")
    warm = r.flag("warm", True, "halve the first step")
    m = r.state("m", 0, "momentum")
    r.assign(m, 0.5 * m + clip(g, -c, c))
    r.let("s", where(m > 0, sp.sign(m), 0.5 * sp.sign(m)))
    r.assign(w, w - lr * where(Eq(t, 1), 0.5, 1.0) * sp.Symbol("s"), when=warm)
    r.assign(w, w - lr * sp.exp(sp.log(abs(m) + 1)) * sp.Symbol("s"), when=~warm)
    mods = load(r, tmp_path)

    def model(params, grads, warm_):
        params = [p.copy() for p in params]
        mm = [np.zeros_like(p) for p in params]
        for k, gs in enumerate(grads, 1):
            for i, x in enumerate(gs):
                mm[i] = 0.5 * mm[i] + np.clip(x, -0.5, 0.5)
                s = np.where(mm[i] > 0, np.sign(mm[i]), 0.5 * np.sign(mm[i]))
                if warm_:
                    params[i] = params[i] - 0.05 * (0.5 if k == 1 else 1.0) * s
                else:
                    params[i] = params[i] - 0.05 * np.exp(np.log(np.abs(mm[i]) + 1)) * s
        return params

    params0, grads = problem(20)
    for warm_ in (True, False):
        want = model(params0, grads, warm_)
        opt = mods["numpy"].SignClip(warm=warm_)
        p = [x.copy() for x in params0]
        st = opt.init(p)
        for gs in grads:
            p, st = opt.step(p, gs, st)
        assert_close(p, want, 1e-12, "numpy")
        tx = mods["jax"].sign_clip(warm=warm_)
        jp = [jnp.asarray(x) for x in params0]
        js = tx.init(jp)
        for gs in grads:
            upd, js = tx.update([jnp.asarray(x) for x in gs], js, jp)
            jp = optax.apply_updates(jp, upd)
        assert_close([np.asarray(x) for x in jp], want, 1e-12, "jax")
        tp = [torch.tensor(x, requires_grad=True) for x in params0]
        topt = mods["torch"].SignClip(tp, warm=warm_)
        for gs in grads:
            for q, x in zip(tp, gs):
                q.grad = torch.tensor(x)
            topt.step()
        assert_close([q.detach().numpy() for q in tp], want, 1e-12, "torch")


# --------------------------------------------------------------------------------------
# the increment form


def test_increment_is_derived_symbolically_not_by_subtraction():
    from optforge.rules.sgd import RULE

    program = compile_rule(RULE, form=Form.INCREMENT)
    for case in program.cases:
        updates = [a for a in case.body if a.role == "update"]
        assert updates and all(sp.Symbol("w") not in a.expr.free_symbols for a in updates)
        assert not any(a.role == "param" for a in case.body)  # one body per case, in its form
    assert not program.reads_param
    in_place = compile_rule(RULE)
    assert all(any(a.role == "param" for a in c.body) for c in in_place.cases)
    assert not any(a.role == "update" for c in in_place.cases for a in c.body)


def test_a_backend_refuses_a_program_in_the_other_form():
    from optforge.backends import backends
    from optforge.rules.sgd import RULE

    with pytest.raises(ValueError, match="the jax backend prints a program in the increment form"):
        backends()["jax"].render(compile_rule(RULE))
    with pytest.raises(ValueError, match="the torch backend prints a program in the in-place form"):
        backends()["torch"].render(compile_rule(RULE, form=Form.INCREMENT))


def test_jax_update_keeps_the_low_bits_of_a_small_step_on_a_large_parameter():
    import jax.numpy as jnp

    from optforge.generated.jax import sgd

    tx = sgd(learning_rate=1e-3)
    params = [jnp.asarray(1e8)]
    updates, _ = tx.update([jnp.asarray(1.0)], tx.init(params), params)
    assert float(updates[0]) == -1e-3  # (w - lr*g) - w would give -0.0014901161193847656


def test_show_lists_equations_state_scope_and_bytes():
    out = subprocess.run(
        [sys.executable, "-m", "optforge.cli", "show", "adamax"], capture_output=True, text=True, check=True
    )
    text = out.stdout
    assert "m <- m + (1 - beta_1)*(g - m)" in text
    assert "per element" in text and "8 bytes per float32 parameter" in text
    assert "reductions:" in text and "beta_1" in text and "[0, 1)" in text
    bad = subprocess.run(
        [sys.executable, "-m", "optforge.cli", "show", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no rule named 'nope'" in bad.stderr


def test_sgd_stores_no_velocity_without_momentum():
    program = compile_rule(get("SGD"))
    assert str(program.state("velocity").allocated_when) == "Ne(momentum, 0)"


def test_errors_quote_the_equation_as_its_author_wrote_it_not_as_keras_options_wrapped_it():
    """Keras's options wrap each of the rule's equations in ``where(is_update, e, x)``; an error in one
    still quotes it (number, text, file and line) as the author wrote it (issue 19)."""
    from optforge.rules._keras_options import keras_options

    checked = 0
    for make, _ in BROKEN:
        with pytest.raises(RuleError) as plain:
            compile_rule(make())
        if plain.value.equation is None:
            continue
        try:
            compile_rule(keras_options(make()))
        except RuleError as wrapped:
            assert "is_update" not in (wrapped.equation or "") and "Piecewise" not in (wrapped.equation or "")
            if wrapped.reason == plain.value.reason:
                assert (wrapped.equation, wrapped.origin) == (plain.value.equation, plain.value.origin)
                checked += 1
    assert checked >= 10


def test_a_number_0_turns_off_is_a_switch_only_where_the_computation_at_0_is_the_one_it_replaces():
    """``compiler.analysis.switch_hypers``: JAX takes the computation that is on for an injected (array) value
    of such a number; that is right only where the on computation with 0 gives the off one. Decay by
    ``d*w`` qualifies; clipping to ``[-tau, tau]`` does not (with 0 it clips every gradient to 0)."""
    from optforge.compiler.analysis import switch_hypers

    def rule(name, on):
        r = Rule(name, title=name)
        lr = r.learning_rate(0.1)
        x = r.hyper("x", 0.0, "[0, inf)", "a number that 0 turns off")
        r.assign(w, w - lr * where(sp.Ne(x, 0), on(x), g))
        return r

    decay = compile_rule(rule("Decay", lambda x: g + x * w), form=Form.INCREMENT)
    clipped = compile_rule(rule("Clipped", lambda x: clip(g, -x, x)), form=Form.INCREMENT)
    assert switch_hypers(decay) == {"x"}
    assert switch_hypers(clipped) == set()


def rounded_product_rule():
    r = Rule("RoundedProduct", title="a product kept in float32, as torch's NAdam keeps mu_product")
    lr = r.learning_rate(0.1)
    beta = r.hyper("beta", 0.9, "[0, 1)", "momentum")
    p = r.state("p", 1, "product of the schedule, kept in float32", scope="tensor")
    mu = r.let("mu", beta * (1 - 0.5 * 0.96 ** (t * 0.004)), "schedule")
    r.assign(p, float32(p * float32(mu)), "product")
    r.assign(w, w - lr * (1 - mu) / (1 - p) * g, "update")
    return r


def test_float32_rounds_a_scalar_in_every_backend_and_kernel(tmp_path, fused_tensors):
    """``float32(x)``, on a once-per-step value and on per-tensor state: equal in float64 to a transcription
    that keeps the product in a NumPy float32 (as torch keeps NAdam's mu_product: the float32 product of
    float32 numbers), to 1e-12, in NumPy, JAX, torch, both fused paths and Triton's (interpreted); without
    the rounding the results differ by about 1e-8. A value per element is rounded in every path too."""
    rule = rounded_product_rule()
    mods = load(rule, tmp_path)
    params0, grads = problem(40, zero_first=False)

    def transcription(count, rounded=True):
        w_, p_ = [x.copy() for x in params0], [np.float32(1) if rounded else 1.0 for _ in params0]
        for k, gs_ in enumerate(grads[:count], 1):
            mu = 0.9 * (1 - 0.5 * 0.96 ** (k * 0.004))
            for i, x in enumerate(gs_):
                p_[i] = p_[i] * (np.float32(mu) if rounded else mu)  # float32 times float32: float32
                w_[i] = w_[i] - 0.1 * (1 - mu) / (1 - float(p_[i])) * x
        return w_

    want = transcription(len(grads))
    unrounded = transcription(len(grads), rounded=False)
    assert max(np.max(np.abs(a - b)) for a, b in zip(want, unrounded)) > 1e-9  # the rounding shows
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused"):
        assert_close(steps(mods, rule, params0, grads, path), want, 1e-12, path)
    assert_close(steps(mods, rule, params0, grads[:3], "torch triton"), transcription(3), 1e-12, "triton")
    assert fused_tensors[0] == 2 * len(grads) * len(params0), "a fused path did not take every tensor"

    # a value per element too (optax's Adafactor keeps its momentum in float32), in every path
    r = Rule("Elementwise", title="a per-element cast")
    lr = r.learning_rate(0.1)
    r.assign(w, w - lr * float32(g))
    mods = load(r, tmp_path / "elementwise")
    want = [p.copy() for p in params0]
    for gs in grads[:3]:
        want = [p - 0.1 * x.astype(np.float32).astype(np.float64) for p, x in zip(want, gs)]
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused", "torch triton"):
        assert_close(steps(mods, r, params0, grads[:3], path), want, 1e-12, f"{path}, per element")


def test_float32_rounding_is_numpys_float32_everywhere_in_its_range():
    """``common.float32`` (arithmetic only, for torch.compile) against NumPy's conversion: normal numbers,
    exact ties (to even), subnormals and their ties, overflow to infinity, zeros' signs, inf and NaN."""
    import math
    import random
    import warnings

    from optforge.runtime.common import float32 as rounded

    rng = random.Random(5)
    values = [0.0, -0.0, 1.0, math.inf, -math.inf, math.nan, 3.4028234663852886e38, 3.4028235677973366e38]
    values += [3.4028235677973362e38, 1e39, 2.0**-126, 2.0**-149, 2.0**-150, 3 * 2.0**-151, -1e-50]
    for _ in range(20_000):
        values.append(rng.uniform(0.5, 1) * 2.0 ** rng.randint(-160, 130) * rng.choice([1, -1]))
        m = rng.randrange(2**23, 2**24)  # halfway between two float32 numbers
        values.append((m + 0.5) * 2.0 ** rng.randint(-149, 104) * rng.choice([1, -1]))
        values.append((rng.randrange(0, 2**23) + 0.5) * 2.0**-149)  # halfway between two subnormals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy warns of the overflow
        for x in values:
            got, want = rounded(x), float(np.float32(x))
            assert (got == want and math.copysign(1, got) == math.copysign(1, want)) or (
                math.isnan(got) and math.isnan(want)
            ), (x, got, want)
        for x in values[:3000]:  # NumPy's scalars and 0-d arrays (a float32 parameter's per-tensor state)
            for given in (np.float32(x), np.array(x, np.float32), np.float64(x)):
                want = float(np.float32(given))
                assert rounded(given) == want or math.isnan(want), (given, rounded(given), want)


def test_float32_of_a_python_number_compiles_in_one_graph():
    """torch.compile traces ``torch_support.float32`` on a number that changes every call (a SymFloat, as
    the step's schedule values are): no graph break, and the value is NumPy's float32 (struct.pack on the
    SymFloat made dynamo recurse without end)."""
    import torch

    from optforge.runtime import torch_support

    @torch.compile(fullgraph=True, dynamic=True, backend="eager")  # dynamo simplified it: no inductor needed
    def scaled(x, k):
        return x * torch_support.float32(k * 0.1)

    x = torch.ones(3, dtype=torch.float64)
    for k in (1.0, 3.0, 7.0):
        assert scaled(x, k)[0].item() == float(np.float32(k * 0.1))


def laprop_rule() -> Rule:
    """LaProp (Ziyin et al. 2020) with a centered variant, as a helper wrote it: a state kept only when
    ``centered`` (updated ``only_if=centered``) and an equation ``when=centered``, which splits the cases."""
    from optforge.compiler.dsl import Given

    r = Rule("LaPropTest", module="laprop_test", title="LaProp", summary="A test.")
    lr = r.learning_rate(0.01)
    b1 = r.hyper("b1", 0.9, "[0, 1)", "momentum")
    b2 = r.hyper("b2", 0.999, "[0, 1)", "second-moment decay")
    eps = r.hyper("eps", 1e-15, "[0, inf)", "added to the root")
    centered = r.flag("centered", False, "centered second moment")
    wd = r.option("wd", "[0, inf)", "decoupled weight decay")
    m, v = r.state("m", 0, "momentum"), r.state("v", 0, "second moment")
    gm = r.state("gm", 0, "mean gradient", exists_if=centered)
    r.assign(v, b2 * v + (1 - b2) * g**2, "second moment")
    r.assign(gm, b2 * gm + (1 - b2) * g, "mean", only_if=centered)
    vhat = r.let("vhat", v / (1 - b2**t), "bias-corrected v")
    r.assign(vhat, maximum(vhat - (gm / (1 - b2**t)) ** 2, 0), "centered", when=centered, only_if=t > 2)
    r.assign(m, b1 * m + (1 - b1) * g / (sqrt(vhat) + eps), "momentum of the normalised gradient")
    r.assign(w, w - lr * wd * w, "decay", only_if=Given(wd))
    r.assign(w, w - lr * m / (1 - b1**t), "update")
    return r


def test_a_flag_that_decides_the_case_is_known_inside_it(tmp_path):
    """In the case where ``centered`` holds, ``gm``'s update runs unconditionally; where it fails, not at
    all (it was an ``if centered:`` around it in both: a dead test, and dead code in one). TorchAdam's
    AMSGrad case computed the plain denominator and then the AMSGrad one over it, a pass thrown away. The
    steps follow the paper's transcription in NumPy (float64, 1e-12), centered or not."""
    rule = laprop_rule()
    program = compile_rule(rule)
    for case in program.cases:
        on = bool(case.condition.subs(sp.Symbol("centered"), True))
        targets = [a.target for a in case.body]
        assert ("gm" in targets) == on
        for a in case.body:
            assert sp.Symbol("centered") not in a.expr.free_symbols, (case.condition, a.target, a.expr)
    params0, grads = problem(6, zero_first=False)
    for centered in (False, True):
        want = []
        for p0, gs in zip(params0, zip(*grads)):
            p, mm, vv, gg = p0.copy(), 0 * p0, 0 * p0, 0 * p0
            for k, x in enumerate(gs, start=1):
                vv = 0.999 * vv + 0.001 * x**2
                gg = 0.999 * gg + 0.001 * x
                vh = vv / (1 - 0.999**k)
                if centered and k > 2:
                    vh = np.maximum(vh - (gg / (1 - 0.999**k)) ** 2, 0)
                mm = 0.9 * mm + 0.1 * x / (np.sqrt(vh) + 1e-15)
                p = p - 0.01 * mm / (1 - 0.9**k)
            want.append(p)
        got = steps(load(rule, tmp_path / str(centered)), rule, params0, grads, "numpy", centered=centered)
        assert_close(got, want, 1e-12, f"centered={centered}")


# -- names the generated code binds itself -----------------------------------------------------------


def _bound_names(path) -> set[str]:
    """Every name a generated module binds (assigned, looped over, a parameter, a function, an import)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def test_a_rule_may_not_name_a_value_as_the_generated_code_names_its_own():
    """Every name that a generated module (NumPy, JAX, torch, the Numba and Triton kernels) binds for itself
    is refused as the name of a rule's value: a let named ``key`` (NumPy's loop over the tensors), ``mask``
    (a Triton kernel's bounds), ``lo`` or ``hi`` (a Numba kernel's row) was overwritten, silently wrong in
    that backend alone (a user's rules found them; the kernels' own names now end in ``_``, so ``mask``,
    ``lo``, ``hi`` and ``row`` are a rule's to take). Read from every registered rule's modules, so a
    backend that starts using a new name fails here until ``compiler/dsl.py`` reserves it."""
    from cases import RULES

    from optforge.builder import package_root

    root = package_root() / "generated"
    checked = 0
    for rule in RULES.values():
        own = set(rule.hypers) | set(rule.states) | {e.target for e in rule.equations} | {"w", "g", "t", "n"}
        own |= set(rule.dtype_keywords)  # the constructor keywords of states' dtypes (mu_dtype)
        own.add(
            rule.module
        )  # JAX's factory: a value of its name is local to the update, which never calls it
        for path in sorted(root.glob(f"*/{rule.module}.py")):
            for name in sorted(_bound_names(path) - own):
                if name.startswith("_"):
                    continue  # refused as every leading underscore is
                probe = Rule(rule.name, module=rule.module, title="a probe")
                with pytest.raises(RuleError, match="reserved"):
                    probe.let(name, probe.learning_rate(0.1) * 2, "a value")
                checked += 1
    assert checked > 1000
    for name in ("key", "i_", "dt", "call", "new_mu", "mu_", "c_lr", "mask_"):
        with pytest.raises(RuleError, match=f"value name '{name}' is reserved"):
            Rule("Probe", title="a probe").let(name, 1, "a value")
    for name in ("mask", "lo", "hi", "row", "first", "total", "acc"):  # the kernels' own end in ``_``
        Rule("Probe", title="a probe").let(name, 1, "a value")


def test_a_global_state_starts_at_a_hyperparameters_value_in_each_torch_group(tmp_path):
    """A global state initialised from a hyperparameter (DSL.md: ``state("d", d0, scope="global")``): the
    torch module failed at import (``float(d0)`` in its class body: NameError). Each parameter group starts
    it at its own hyperparameter's value, as NumPy and JAX do; a user's rule found it."""
    import torch

    r = Rule("GlobalFromHyper", title="a global scale that starts at a hyperparameter and halves")
    lr = r.learning_rate(0.1)
    d0 = r.hyper("d0", 1.0, "(0, inf)", "initial scale")
    d = r.state("d", d0, "scale", scope="global")
    r.assign(w, w - lr * d * g, "update")
    r.assign(d, d / 2, "halve")
    mods = load(r, tmp_path)
    params0, grads = problem(3, shapes=[(3,), (2, 2)], scales=[1.0, 1.0])
    for d0_value in (1.0, 3.0):
        want = steps(mods, r, params0, grads, "numpy", learning_rate=0.1, d0=d0_value)
        for path in ("jax", "torch"):
            rate = {"lr" if path == "torch" else "learning_rate": 0.1}
            got = steps(mods, r, params0, grads, path, **rate, d0=d0_value)
            assert_close(got, want, 1e-15, f"{path}, d0={d0_value}")
    # two groups, each its own d0: the first step scales by it, then halves it
    a, b = (torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in range(2))
    opt = mods["torch"].GlobalFromHyper([{"params": [a], "d0": 1.0}, {"params": [b], "d0": 4.0}], lr=0.1)
    a.grad, b.grad = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    opt.step()
    assert torch.equal(a.detach(), torch.full((2,), 0.9, dtype=torch.float64))
    assert torch.equal(b.detach(), torch.full((2,), 0.6, dtype=torch.float64))
    assert [float(group["d"]) for group in opt.param_groups] == [0.5, 2.0]


def test_a_value_that_is_a_number_at_the_first_step_and_a_reduction_after_it(tmp_path):
    """``dk = where(t == 1, c, d)`` with ``d`` a global state computed by a reduction over all tensors: in
    torch ``d`` is a 0-d tensor and ``dk`` was the float ``c`` at the first step, which
    ``torch.maximum(dk, ...)`` refused (TypeError; a user's Prodigy-like rule found it). The number is a 0-d
    tensor there: NumPy, JAX and torch agree."""
    from optforge.compiler.dsl import global_sum

    r = Rule("FirstStepNumber", title="a scale that starts at a hyperparameter and grows with the gradients")
    lr = r.learning_rate(0.1)
    c = r.hyper("c", 1.0, "(0, inf)", "first value")
    d = r.state("d", 0, "scale", scope="global")
    dk = r.let("dk", where(Eq(t, 1), c, d), "this step's scale")
    r.assign(w, w - lr * g / dk, "update")
    r.assign(d, maximum(dk, global_sum(abs(g))), "grow")
    mods = load(r, tmp_path)
    params0, grads = problem(3, shapes=[(3,), (2, 2)], scales=[1.0, 1.0])
    want = steps(mods, r, params0, grads, "numpy", learning_rate=0.1)
    assert_close(steps(mods, r, params0, grads, "jax", learning_rate=0.1), want, 1e-15, "jax")
    assert_close(steps(mods, r, params0, grads, "torch", lr=0.1), want, 1e-15, "torch")


def test_a_state_that_keeps_the_initial_parameters_needs_no_equation(tmp_path):
    """A state initialised from ``w`` and never assigned is a snapshot of the initial parameters
    (Prodigy's and D-Adaptation's ``x0``): it was refused as never updated, and ``x0 <- x0`` was the
    workaround. It keeps its value in every backend and kernel path, against a NumPy transcription; a state
    of a constant that is never assigned is still an error (the catalogue above)."""
    from optforge.compiler.dsl import global_sum

    r = Rule("KeepsTheStart", title="a step pulled back towards the initial parameters")
    lr = r.learning_rate(0.1)
    x0 = r.state("x0", w, "the initial parameters")
    pull = r.let("pull", global_sum(g * (x0 - w)), "the gradients' agreement with the way back")
    r.assign(w, w - lr * (g + (x0 - w) * pull / 100), "update")
    mods = load(r, tmp_path)
    params0, grads = problem(4, shapes=[(3,), (2, 2)], scales=[1.0, 1.0])
    x = [p.copy() for p in params0]
    for gs in grads:  # the transcription
        pull_value = sum(float(np.sum(gi * (p0 - xi))) for gi, p0, xi in zip(gs, params0, x))
        x = [xi - 0.1 * (gi + (p0 - xi) * pull_value / 100) for gi, p0, xi in zip(gs, params0, x)]
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused", "torch triton"):
        rate = {"lr" if path.startswith("torch") else "learning_rate": 0.1}
        assert_close(steps(mods, r, params0, grads, path, **rate), x, 1e-13, path)


def test_a_condition_that_is_python_s_true_or_false_is_refused():
    """``t == 1`` and ``x != 0`` compare two expressions as written (SymPy's structural equality): Python's
    False and True. ``where(t == 1, g, m)`` silently became ``m`` and ``when=(b == 0)`` a branch that never
    runs (a user's optimistic gradient descent ended at 0.05 where optax gives 0.15); each is now an error
    that says to write ``Eq``/``Ne``, naming the rule where there is one."""
    from optforge.compiler.dsl import Eq, Ne, where

    r = Rule("PythonBool", title="a probe")
    lr = r.learning_rate(0.1)
    b = r.hyper("b", 0.0, "[0, 1)", "b")
    m = r.state("m", 0, "m")
    with pytest.raises(TypeError, match=r"where\(\) is Python's False.*Eq\(t, 1\)"):
        where(t == 1, g, m)
    with pytest.raises(TypeError, match="Python's True"):
        where(g != 0, g, 0)
    with pytest.raises(RuleError, match=r"rule 'PythonBool'.*when= is Python's False"):
        r.assign(w, w - lr * g, when=(b == 0))
    with pytest.raises(RuleError, match="only_if= is Python's True"):
        r.assign(m, m + g, only_if=(g != 0))
    with pytest.raises(RuleError, match="exists_if= is Python's False"):
        r.state("v", 0, "v", exists_if=(b == 1))
    r.assign(m, where(Eq(t, 1), g, m + g), "first step", only_if=Ne(g, 0))  # the spellings that work
    r.assign(w, w - lr * m, "update", when=Eq(b, 0))
    r.assign(w, w - 2 * lr * m, "update", when=Ne(b, 0))
    compile_rule(r)


def test_a_reserved_name_says_why():
    """``c_alpha`` (AdEMAMix's alpha, as a user named it) is the kernels' constants' family: the error says
    which names are the generated code's, not only that the name is reserved."""
    with pytest.raises(RuleError, match=r"value name 'c_alpha' is reserved \(the generated code names.*c_\*"):
        Rule("Probe", title="a probe").let("c_alpha", 1, "a value")
    with pytest.raises(RuleError, match="g, w, t, n and loss are the gradient"):
        Rule("Probe", title="a probe").let("loss", 1, "a value")


def test_idiv_and_imod_take_integers_only():
    """``imod(t, k)`` with a real hyperparameter ``k`` (a user's Lookahead, ``k=2.5``) computed a real
    remainder in every backend, silently; it is a RuleError naming the equation and the operand. An
    integer option takes it."""
    from optforge.compiler.dsl import Given, imod

    def lookahead(integer: bool) -> Rule:
        r = Rule("Lookahead", title="slow weights every k steps")
        lr = r.learning_rate(0.1)
        if integer:
            k = r.option("k", "[1, inf)", "sync period", integer=True, default=5)
            sync = r.let("sync", Given(k) & Eq(imod(t, k), 0), "sync step")
        else:
            k = r.hyper("k", 5.0, "[1, inf)", "sync period")
            sync = r.let("sync", Eq(imod(t, k), 0), "sync step")
        slow = r.state("slow", w, "slow weights")
        r.assign(w, w - lr * g, "fast step")
        r.assign(slow, slow + 0.5 * (w - slow), "slow step", only_if=sync)
        r.assign(w, slow, "back to the slow weights", only_if=sync)
        return r

    with pytest.raises(RuleError, match=r"equation 1 `sync = .*imod takes integers.*operand `k` is not one"):
        compile_rule(lookahead(integer=False))
    compile_rule(lookahead(integer=True))


def test_an_initial_value_that_reads_a_reduction_is_a_rule_error():
    """``state("r", global_norm(w))`` compiled and then failed when printed (a BackendError asking to extend
    the NumPy printer's table), and ``state("a", tensor_mean(w))`` built NumPy's state shaped like ``w``,
    which its own step refused (a helper's DoG found both): a RuleError naming the state and the reduction,
    whose hint writes the first step's value with ``Eq(t, 1)`` (``where`` refuses ``t == 1``)."""
    from optforge.compiler.dsl import global_norm, tensor_mean

    for init, reduction in ((global_norm(w) + 1, "GlobalSum"), (tensor_mean(w), "TensorSum")):
        r = Rule("InitReduces", title="t")
        r.learning_rate(0.1)
        s = r.state("r", init, "a state")
        r.assign(w, w - 0.1 * g * s, "update")
        with pytest.raises(
            RuleError, match=f"initial value of state 'r' .* reads the reduction .*{reduction}"
        ) as e:
            compile_rule(r)
        assert "where(Eq(t, 1)" in str(e.value)


def test_a_temporary_state_assigned_twice_before_a_read_is_a_rule_error():
    """DSL.md: a state assigned twice with nothing reading the first value is an error (the first value is
    lost). A state whose previous value nothing reads is a temporary (not stored), and its first value was
    dropped silently (a helper's rule, ``m <- g; m <- 2 g``, compiled)."""
    r = Rule("TwoWrites", title="t")
    lr = r.learning_rate(0.1)
    m = r.state("m", 0, "m")
    r.assign(m, g, "first")
    r.assign(m, 2 * g, "second")
    r.assign(w, w - lr * m, "update")
    with pytest.raises(RuleError, match="'m' is assigned here and again by equation 2 before anything reads"):
        compile_rule(r)
