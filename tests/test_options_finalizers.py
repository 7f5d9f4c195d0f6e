"""Options read without ``Given`` and finalisers that read the step (issue 19, defects 6 and 7).

An option (``rule.option``) is None when not given: a read of its value that ``Given(x)`` does not guard is
a compile error at the equation, not a ``TypeError`` at run time. A finaliser sees the step ``t`` (and ``n``)
of the last update, the state (per element, per tensor or once per optimizer) and the hyperparameters; what
it may not read is an error naming it. Every rule here is a throwaway, checked in NumPy, JAX and torch
against a literal NumPy transcription written without the compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close, problem
from rulekit import load

from optforge.compiler.dsl import Eq, Given, Rule, g, idiv, n, t, w, where
from optforge.compiler.errors import RuleError
from optforge.compiler.pipeline import compile_rule
from optforge.compiler.show import show

LR = 0.05
BACKENDS = ("numpy", "jax", "torch")


def _rule(name):
    r = Rule(name, title="a throwaway rule")
    return r, r.learning_rate(LR)


# --------------------------------------------------------------------------------------
# options read outside Given


def unguarded_in_update():
    r, lr = _rule("Unguarded")
    x = r.option("x", "(0, inf)", "scale")
    r.assign(w, w - lr * g / x, "step")
    return r


def unguarded_in_let():
    r, lr = _rule("UnguardedLet")
    x = r.option("x", "(0, inf)", "scale")
    s = r.let("s", g * x, "scaled gradient")
    r.assign(w, w - lr * s, "step")
    return r


def guarded_by_data_only():  # where(g > 0, x, 1) evaluates x in every element-wise backend
    r, lr = _rule("DataGuard")
    x = r.option("x", "(0, inf)", "scale")
    r.assign(w, w - lr * g * where(g > 0, x, 1), "step")
    return r


def read_in_a_test():
    r, lr = _rule("ReadInTest")
    x = r.option("x", "(0, inf)", "threshold")
    r.assign(w, w - lr * where(abs(g) > x, g, 0), "step")
    return r


def read_in_when():
    r, lr = _rule("ReadInWhen")
    x = r.option("x", "(0, inf)", "threshold")
    r.assign(w, w - lr * g, "step", when=sp.Gt(x, 1))
    r.assign(w, w - lr * g, "step", when=sp.Le(x, 1))
    return r


def wrong_option_guard():
    r, lr = _rule("WrongGuard")
    x = r.option("x", "(0, inf)", "scale")
    y = r.option("y", "(0, inf)", "other")
    r.assign(w, w - lr * g / x, "step", only_if=Given(y))
    return r


def unguarded_in_finalizer():
    r, lr = _rule("UnguardedFinal")
    x = r.option("x", "(0, inf)", "scale")
    r.assign(w, w - lr * g, "step")
    r.finalizer(w * x, "scale at the end")
    return r


def unguarded_state_init():
    r, lr = _rule("UnguardedInit")
    x = r.option("x", "(0, inf)", "initial value")
    m = r.state("m", x, "momentum")
    r.assign(m, m + g, "accumulate")
    r.assign(w, w - lr * m, "step")
    return r


@pytest.mark.parametrize(
    "make, fragment",
    [
        (unguarded_in_update, "equation 1 `w <- "),
        (unguarded_in_let, "equation 1 `s = "),
        (guarded_by_data_only, "equation 1 `w <- "),
        (read_in_a_test, "equation 1 `w <- "),
        (read_in_when, "when=x > 1"),
        (wrong_option_guard, "equation 1 `w <- "),
        (unguarded_in_finalizer, "finaliser 'scale at the end'"),
        (unguarded_state_init, "state 'm'"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_option_read_without_given_is_a_compile_error(make, fragment):
    with pytest.raises(RuleError) as info:
        compile_rule(make())
    text = str(info.value)
    assert fragment in text, text
    assert "option 'x'" in text and "Given(x)" in text, text
    assert "test_options_finalizers.py:" in text or "state 'm'" in text, text  # the line that wrote it


def guarded_rule():
    """Every guard form; the oracle below transcribes the same equations by hand."""
    r, lr = _rule("GuardedOption")
    x = r.option("x", "(0, inf)", "scale")
    y = r.option("y", "(0, inf)", "threshold")
    flag = r.let("has_y", Given(y), "y given")
    m = r.state("m", x, "momentum", exists_if=Given(x))
    r.assign(m, m * 0.5 + g * x, "momentum", only_if=Given(x))  # only_if
    r.assign(g, g + m / x, "with momentum", when=Given(x))  # when
    r.assign(g, where(~Given(y), g, where(abs(g) > y, y * sp.sign(g), g)), "clip")  # ~Given, nested test
    r.assign(g, where(Given(y) & (y > 1), g / y, g), "and, left to right")  # and: Given first
    r.assign(g, where(sp.Not(Given(x)) | (x > 1), g, g * x), "or, left to right")  # or: not Given first
    r.assign(w, w - lr * where(flag, g * y, g), "step")  # a named condition
    return r


def guarded_oracle(params, grads, x, y):
    p = [a.copy() for a in params]
    m = [np.full_like(a, x) for a in params] if x is not None else None
    for gs in grads:
        for i, gr in enumerate(gs):
            gr = gr.copy()
            if x is not None:
                m[i] = m[i] * 0.5 + gr * x
                gr = gr + m[i] / x
            if y is not None:
                gr = np.where(np.abs(gr) > y, y * np.sign(gr), gr)
            if y is not None and y > 1:
                gr = gr / y
            if not (x is None or x > 1):
                gr = gr * x
            p[i] = p[i] - LR * (gr * y if y is not None else gr)
    return p


def _run(backend, module, cls, hypers, params0, grads):
    """Final params of a throwaway rule's module, and the finalised ones if it has a finaliser."""
    import jax.numpy as jnp
    import optax
    import torch

    fin = None
    if backend == "numpy":
        opt = getattr(module, cls)(**hypers)
        p = [a.copy() for a in params0]
        st = opt.init(p)
        for gs in grads:
            p, st = opt.step(p, [a.copy() for a in gs], st)
        out = [a.copy() for a in p]
        if hasattr(opt, "finalize_variable_values"):
            fin = opt.finalize_variable_values(p, st)
        return out, fin
    if backend == "jax":
        fn = next(v for k, v in vars(module).items() if k.lower() == cls.lower() and callable(v))
        tx = fn(**hypers)
        p = [jnp.asarray(a) for a in params0]
        st = tx.init(p)
        for gs in grads:
            u, st = tx.update([jnp.asarray(a) for a in gs], st, p)
            p = optax.apply_updates(p, u)
        if hasattr(module, "finalize_variable_values"):
            fin = [np.asarray(a) for a in module.finalize_variable_values(p, st, **hypers)]
        return [np.asarray(a) for a in p], fin
    kw = {("lr" if k == "learning_rate" else k): v for k, v in hypers.items()}
    tp = [torch.tensor(a, requires_grad=True) for a in params0]
    opt = getattr(module, cls)(tp, **kw)
    for gs in grads:
        for q, a in zip(tp, gs):
            q.grad = torch.tensor(a)
        opt.step()
    out = [q.detach().numpy().copy() for q in tp]
    if hasattr(opt, "finalize_variable_values"):
        opt.finalize_variable_values()
        fin = [q.detach().numpy().copy() for q in tp]
    return out, fin


@pytest.fixture(scope="module")
def guarded_modules(tmp_path_factory):
    return load(guarded_rule(), tmp_path_factory.mktemp("guarded"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x, y", [(None, None), (0.5, None), (None, 0.3), (2.0, 1.5), (0.5, 0.3)])
def test_guarded_option_reads_build_and_match_the_transcription(guarded_modules, backend, x, y):
    params0, grads = problem(5)
    mod = guarded_modules[backend]
    cls = "GuardedOption" if backend != "jax" else "guarded_option"
    got, _ = _run(backend, mod, cls, {"x": x, "y": y}, params0, grads)
    assert_close(got, guarded_oracle(params0, grads, x, y), 1e-12, f"{backend} x={x} y={y}")


# --------------------------------------------------------------------------------------
# finalisers


def bias_corrected_ema(define_step=False):
    """The EMA of the weights, read only by the finaliser, bias-corrected with the last step's t."""
    r, lr = _rule("BiasCorrectedEma" + ("Acc" if define_step else ""))
    if define_step:
        r.define_step(idiv(n, 2) + 1, "the step counts pairs of calls")
    ema = r.state("ema", 0, "EMA of the weights")
    calls = r.state("calls", 0, "calls so far", scope="global")
    r.assign(calls, calls + 1, "count")
    r.assign(w, w - lr * g, "step")
    r.assign(ema, 0.9 * ema + 0.1 * w, "EMA")
    r.finalizer(ema / (1 - 0.9**t) + 1e-3 * calls * where(Eq(t, 1), 1, 0) + 1e-4 * n, "bias-corrected EMA")
    return r


def ema_oracle(params, grads, define_step):
    p = [a.copy() for a in params]
    ema = [np.zeros_like(a) for a in params]
    for gs in grads:
        p = [a - LR * b for a, b in zip(p, gs)]
        ema = [0.9 * e + 0.1 * a for e, a in zip(ema, p)]
    calls = len(grads)
    n_last = calls - 1  # the finaliser sees the last update's step
    t_last = n_last // 2 + 1 if define_step else n_last + 1
    return p, [e / (1 - 0.9**t_last) + 1e-3 * calls * (t_last == 1) + 1e-4 * n_last for e in ema]


@pytest.mark.parametrize("define_step", [False, True], ids=["t=n+1", "define_step"])
@pytest.mark.parametrize("steps", [1, 5])
def test_finalizer_reads_the_last_step(tmp_path, define_step, steps):
    rule = bias_corrected_ema(define_step)
    mods = load(rule, tmp_path)
    params0, grads = problem(steps)
    want_p, want_fin = ema_oracle(params0, grads, define_step)
    for backend in BACKENDS:
        cls = rule.name if backend != "jax" else rule.module
        got_p, got_fin = _run(backend, mods[backend], cls, {}, params0, grads)
        assert_close(got_p, want_p, 1e-12, f"{backend} params")
        assert_close(got_fin, want_fin, 1e-12, f"{backend} finalised")


def test_state_read_only_by_a_finalizer_is_kept():
    program = compile_rule(bias_corrected_ema())
    ema = program.state("ema")
    assert ema.persists and ema.allocated_when is sp.true


def _finalizer_reads(what):
    r, lr = _rule("BadFinal")
    s = r.let("s", 2 * g, "twice the gradient")
    r.assign(w, w - lr * s, "step")
    r.finalizer(w + {"g": g, "let": s, "lr": lr, "undefined": sp.Symbol("q")}[what], "bad finaliser")
    return r


@pytest.mark.parametrize(
    "what, fragment",
    [
        ("g", "reads 'g': the gradient"),
        ("let", "reads 's': a value computed during a step"),
        ("lr", "reads 'learning_rate'"),
        ("undefined", "reads 'q': not defined"),
    ],
)
def test_finalizer_reading_what_it_cannot_see_is_a_compile_error(what, fragment):
    with pytest.raises(RuleError) as info:
        compile_rule(_finalizer_reads(what))
    text = str(info.value)
    assert "finaliser 'bad finaliser'" in text and fragment in text, text
    assert "test_options_finalizers.py:" in text, text


def test_finalizer_is_in_show_and_the_docs_page():
    from optforge.documentation.pages import page

    rule = bias_corrected_ema()
    program = compile_rule(rule)
    text = show(program)
    assert "finaliser" in text and "bias-corrected EMA" in text, text
    assert "w <- " in text and "ema/(1 - 0.9^t)" in text, text
    md = page(rule, program, None)
    assert "## Finaliser" in md and "Bias-corrected EMA:" in md, md
    tex = md.split("## Finaliser")[1].split("$$")[1]
    assert tex.strip().startswith("w = ") and r"\mathrm{ema}_{t}" in tex and "t-1" not in tex, tex
