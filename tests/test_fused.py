"""The fused path (``fused=True``: Numba kernels from generated/fused) equals the plain path.

Every rule and named configuration (those named after their library: against it, in
test_reference_libraries.py), and each of Keras's shared options on one rule of the registry (turning, so
that every rule meets some), in NumPy and in torch (CPU): float64 to 1e-12 relative, parameters and every
stored state; float32 (on ``cases.MACHINERY``) no less accurate than the plain path (both measured against
the float64 run). The fused path must actually be taken
(every tensor, counted) where it applies, and must step aside where it does not (a non-contiguous view,
a float16 parameter, a mixed-dtype state).
"""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import pytest
from cases import MACHINERY, RULES, kernel_rule_configs, kernel_takes, kernels
from drivers import problem, rel_error, run
from references import library_reference

from optforge.runtime import fused_support

pytest.importorskip("numba")

STEPS = 40
OPTIONS = {
    "weight_decay": dict(weight_decay=0.05),
    "clipnorm": dict(clipnorm=0.5),
    "clipvalue": dict(clipvalue=0.3),
    "global_clipnorm": dict(global_clipnorm=1.0),
    "ema_overwrite": dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5),
    "loss_scale": dict(loss_scale_factor=128.0),
    "accumulation_clipnorm": dict(gradient_accumulation_steps=3, clipnorm=0.5),
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


def _compare(rule, hypers, backend, fused_tensors, float32=True):
    params0, grads = problem(STEPS, np.float64)
    plain = run(backend, rule, hypers, params0, grads, fused=False)
    before = fused_tensors[0]
    fused = run(backend, rule, hypers, params0, grads, fused=True)
    # every tensor (a rule that reads the shape: those whose step is element-wise, the test the compiler
    # made, evaluated here: cases.kernel_takes)
    taken = sum(kernel_takes(rule, p.shape, hypers) for p in params0)
    assert taken, "the fused path takes no tensor of this problem: the test compares nothing"
    assert fused_tensors[0] - before == STEPS * taken, "the fused path did not take the tensors it takes"
    (pp, ps), (fp, fs) = plain, fused
    for i, (a, b) in enumerate(zip(fp, pp)):
        assert rel_error(a, b) <= 1e-12, f"float64 params[{i}]: relative error {rel_error(a, b):.3g}"
    for n in ps:
        assert (fs[n] is None) == (ps[n] is None), f"state {n} exists in one path only"
        for i, (a, b) in enumerate(zip(fs[n] or [], ps[n] or [])):
            assert rel_error(a, b) <= 1e-12, f"float64 state {n}[{i}]: relative error {rel_error(a, b):.3g}"
    if not float32:
        return
    # float32: the fused path is as accurate as the plain one, both against the float64 run
    p32 = [p.astype(np.float32) for p in params0]
    g32 = [[x.astype(np.float32) for x in g] for g in grads]
    plain32, _ = run(backend, rule, hypers, p32, g32, fused=False)
    fused32, _ = run(backend, rule, hypers, p32, g32, fused=True)
    for i, (a, b, want) in enumerate(zip(fused32, plain32, pp)):
        assert a.dtype == np.float32
        err_fused, err_plain = rel_error(a, want), rel_error(b, want)
        assert err_fused <= 2 * err_plain + 1e-6, (
            f"float32 params[{i}]: fused error {err_fused:.3g}, plain error {err_plain:.3g} (against float64)"
        )


def _config_cases() -> list:
    """Every rule and named configuration in NumPy, float64; each rule's default in torch too (the same
    kernels), and in float32 on the rules that show every feature (``cases.MACHINERY``: float32 is a compile
    of its own, seconds each, and what differs there is how the once-per-step scalars are rounded, the
    same for every rule). A rule named after its library (TorchAdam, OptaxAdam) is left out: its fused path
    equals the library in float64 on every configuration, in NumPy and torch, every tensor taken
    (test_reference_libraries.py)."""
    return [
        pytest.param(rule, name, cfg, backends, id=f"{rule.name}-{name}")
        for rule, name, cfg in (p.values for p in kernel_rule_configs())
        for backends in [
            ("numpy", "torch") if name == "default" and library_reference(rule) is None else ("numpy",)
        ]
        if library_reference(rule) is None or (rule in MACHINERY and name == "default")
    ]


@pytest.mark.parametrize("rule, name, cfg, backends", _config_cases())
def test_fused_equals_plain(rule, name, cfg, backends, fused_tensors):
    # the backends in one test: torch's fused path calls the NumPy kernels, compiled once (seconds) here
    for backend in backends:
        _compare(rule, cfg, backend, fused_tensors, float32=name == "default" and rule in MACHINERY)


def _option_cases() -> list:
    """Each option on one rule, turning through the registry (the kernels are compiled per rule and per
    combination of options, seconds each; test_keras_options.py checks each option's stage against Keras),
    in NumPy and in torch (its kernels are the NumPy ones, called on the tensors' memory: one test)."""
    rules = [r for r in RULES.values() if kernels(r)]
    return [
        pytest.param(rules[i % len(rules)], option, id=f"{rules[i % len(rules)].name}-{option}")
        for i, option in enumerate(sorted(OPTIONS))
    ]


@pytest.mark.parametrize("rule, option", _option_cases())
def test_fused_equals_plain_with_keras_options(rule, option, fused_tensors):
    hypers = dict(OPTIONS[option])
    if rule.hypers["learning_rate"].default is None:
        hypers["learning_rate"] = 0.01
    # float32 once per rule (test_fused_equals_plain); with options, float64: a kernel compile fewer each
    for backend in ("numpy", "torch"):
        _compare(rule, hypers, backend, fused_tensors, float32=False)


def test_numpy_fused_steps_aside_for_what_it_cannot_take(fused_tensors):
    """A transposed view, a float16 parameter and a float64 parameter next to float32 ones: the views and
    the half parameter take the plain path, the others the fused one, with the plain path's results."""
    import optforge.generated.numpy as gen

    rng = np.random.default_rng(1)
    base = [rng.normal(size=(4, 6)), rng.normal(size=(5,)), rng.normal(size=(3, 3)), rng.normal(size=(7,))]
    dtypes = [np.float32, np.float64, np.float16, np.float32]

    def params():
        out = [b.astype(d) for b, d in zip(base, dtypes)]
        out[0] = np.asfortranarray(out[0])  # not C-contiguous
        return out

    grads = [[rng.normal(size=p.shape).astype(p.dtype) for p in params()] for _ in range(5)]
    assert not params()[0].flags.c_contiguous
    results = []
    for fused in (False, True):
        opt = gen.Adamax(learning_rate=0.01, fused=fused)
        ps = params()
        state = opt.init(ps)
        for g in grads:
            ps, state = opt.step(ps, g, state)
        results.append(ps)
    assert fused_tensors[0] == 5 * 2  # the float64 and the last float32 parameter, each step
    for a, b in zip(*results):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_rule_without_kernels_says_why_and_steps_on_the_plain_path(tmp_path):
    """A rule whose constructs the kernels do not take (a user's, through ``optforge.load``: every branch
    reads a matrix's rows; every rule of the registry has kernels for some tensors): no kernel module;
    ``fused=True`` (NumPy, torch) and torch's ``"triton"`` are a ValueError that names the equation; torch's
    ``fused=None`` (kernels where there are) steps on the plain path, equal to ``fused=False``."""
    import torch

    import optforge
    from optforge.compiler.analysis import kernel_obstacle
    from optforge.compiler.dsl import Rule, g, rank, rows, w, where
    from optforge.compiler.pipeline import compile_rule

    rule = Rule("UserRowsEverywhere", title="a step scaled by the rows in every branch")
    lr = rule.learning_rate(0.1)
    rule.assign(w, w - lr * where(rank >= 2, g * rows, g / rows), "update")
    loaded = optforge.load(rule, tmp_path)
    why = kernel_obstacle(compile_rule(rule))
    assert "is not lowered into kernels yet" in why and "equation 1" in why, why
    assert set(loaded.refused) == {"fused", "triton"}
    assert not list(tmp_path.rglob("fused/*.py")) and not list(tmp_path.rglob("triton/*.py"))
    with pytest.raises(ValueError, match=re.escape(f"{rule.name} has no fused kernels: {why}")):
        getattr(loaded.numpy, rule.name)(learning_rate=0.01, fused=True)
    params = [torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))]
    for fused in (True, "triton"):
        with pytest.raises(ValueError, match=re.escape(f"{rule.name} has no kernels: {why}")):
            getattr(loaded.torch, rule.name)(params, lr=0.01, fused=fused)
    results = []
    for fused in (None, False):
        w0 = torch.nn.Parameter(torch.arange(6.0, dtype=torch.float64).reshape(3, 2))
        opt = getattr(loaded.torch, rule.name)([w0], lr=0.01, fused=fused)
        for k in range(3):
            w0.grad = torch.full_like(w0, 0.5 + k)
            opt.step()
        results.append(w0.detach().clone())
    assert torch.equal(results[0], results[1]) and not torch.equal(
        results[0], torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    )


def test_fused_must_be_a_bool():
    import optforge.generated.numpy as gen

    with pytest.raises(TypeError, match="fused must be True or False. Received: 1"):
        gen.SGD(fused=1)


def test_fused_without_numba_says_how_to_install_it(monkeypatch):
    import optforge.generated.numpy as gen

    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.raises(
        ImportError, match=r"Adamax\(fused=True\) compiles its update with Numba.*optforge\[fused\]"
    ):
        gen.Adamax(fused=True)


@pytest.mark.parametrize("split", [False, True])
def test_parts_cover_every_element_once_and_are_balanced(split):
    sizes = [100_000, 90, 80_000, 10, 17_000, 5, 0]
    for n in (1, 2, 3):
        parts = fused_support._parts(sizes, n, split)
        covered = {i: [] for i in range(len(sizes))}
        for part in parts:
            for i, lo, hi in part:
                covered[i].append((lo, hi))
        for i, ranges in covered.items():  # contiguous, disjoint, the whole tensor
            ranges.sort()
            assert ranges[0][0] == 0 and ranges[-1][1] == sizes[i], (i, ranges)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            if not split or sizes[i] < fused_support.SPLIT_MIN:
                assert len(ranges) == 1
        loads = [sum(hi - lo for _, lo, hi in p) for p in parts]
        assert max(loads) - min(loads) <= (max(sizes) if not split else fused_support.SPLIT_MIN), loads
    assert fused_support._parts([5], 4, True) == [[(0, 0, 5)]]


def test_several_threads_give_the_same_result(monkeypatch):
    """The tensors shared out over two or three threads (forced; large ones cut in parts where the rule
    allows) or done by one: identical results, with per-tensor values (clipnorm, the NovoGrads) too; and
    torch's fused path (tensors by address) gives NumPy's results bit for bit."""
    import torch

    import optforge.generated.numpy as gen
    import optforge.generated.torch as gen_torch

    shapes = [(300, 200), (500,), (200, 300), (7,), (40_001,)]
    monkeypatch.setattr(fused_support, "PARALLEL_MIN", 0)
    monkeypatch.setattr(fused_support, "SPLIT_MIN", 1000)
    cases = [("Nadam", {}), ("Adamax", {"clipnorm": 0.5}), ("NovoGrad", {}), ("NovoGradTF1", {})]
    cases += [("SGD", {"momentum": 0.9, "clipnorm": 0.5, "use_ema": True})]
    for rule, options in cases:
        out = []
        for threads in ("1", "2", "3"):
            monkeypatch.setenv("OPTFORGE_THREADS", threads)
            rng = np.random.default_rng(2)
            ps = [rng.normal(size=s).astype(np.float32) for s in shapes]
            gs = [rng.normal(size=s).astype(np.float32) for s in shapes]
            opt = getattr(gen, rule)(fused=True, **options)
            state = opt.init(ps)
            for _ in range(3):
                ps, state = opt.step(ps, gs, state)
            out.append(ps)
        for got in out[1:]:
            for a, b in zip(out[0], got):
                assert np.array_equal(a, b), rule
        rng = np.random.default_rng(2)
        tp = [torch.nn.Parameter(torch.tensor(rng.normal(size=s).astype(np.float32))) for s in shapes]
        gs = [torch.tensor(rng.normal(size=s).astype(np.float32)) for s in shapes]
        hypers = {("lr" if k == "learning_rate" else k): v for k, v in options.items()}
        opt = getattr(gen_torch, rule)(tp, fused=True, **hypers)
        for _ in range(3):
            for p, g in zip(tp, gs):
                p.grad = g.clone()
            opt.step()
        for i, (a, b) in enumerate(zip(out[0], tp)):
            assert np.array_equal(a, b.detach().numpy()), f"{rule}: torch params[{i}] differ from NumPy's"


def test_one_kernel_call_updates_every_tensor_of_a_step(monkeypatch):
    """Per step and dtype, one call of the case's kernel function takes every tensor (parts of tensors where
    the step reads no per-tensor value; whole tensors where it does: clipnorm's norm, NovoGrad's second
    moment), never one call per tensor."""
    import optforge.generated.numpy as gen

    monkeypatch.setattr(fused_support, "PARALLEL_MIN", 0)
    monkeypatch.setattr(fused_support, "SPLIT_MIN", 1000)
    monkeypatch.setenv("OPTFORGE_THREADS", "2")
    calls = []
    run = fused_support.run

    def spy(case, work, scalars):
        def update(rows, *args):
            whole = bool(np.all(rows[:, 1] == 0) and len(set(rows[:, 0].tolist())) == len(rows))
            calls.append(("tensors" if whole else "parts", len(rows)))
            return case.update(rows, *args)

        return run(dataclasses.replace(case, update=update), work, scalars)

    monkeypatch.setattr(fused_support, "run", spy)
    shapes = [(40, 50), (3000,), (7,), (2, 3, 4)] * 5  # 20 tensors, 10 of them cut in two
    rng = np.random.default_rng(0)
    for rule, options, kind, rows in [
        ("SGD", {"momentum": 0.9}, "parts", 30),
        ("SGD", {"momentum": 0.9, "clipnorm": 1.0}, "tensors", 20),
        ("NovoGrad", {}, "tensors", 20),
    ]:
        calls.clear()
        ps = [rng.normal(size=s) for s in shapes]
        opt = getattr(gen, rule)(fused=True, **options)
        state = opt.init(ps)
        for _ in range(3):
            ps, state = opt.step(ps, [rng.normal(size=s) for s in shapes], state)
        assert calls == [(kind, rows)] * 3, (rule, options, calls)


def test_a_state_kept_under_the_flag_that_decides_the_case(tmp_path, fused_tensors):
    """Issue 15's defect: a state stored only under a flag (``exists_if=amsgrad``) that also decides the
    rule's case (two equations for ``w``, ``when=amsgrad`` and ``when=~amsgrad``). The case's kernels took
    no ``amsgrad`` (the case decides it) yet tested it (``NameError``); now the case decides it there too.
    NumPy's plain and fused paths and torch's Triton kernels (in the interpreter) against a literal NumPy
    transcription, float64 to 1e-12, with the flag on and off."""
    from rulekit import load

    from optforge.compiler.dsl import Rule, g, maximum, sqrt, w

    R = Rule("AmsgradByFlag", title="AdamW-like, its maximum kept only with amsgrad")
    lr = R.learning_rate(0.01)
    b1 = R.hyper("beta1", 0.9, "[0, 1)", "first moment decay")
    b2 = R.hyper("beta2", 0.99, "[0, 1)", "second moment decay")
    eps = R.hyper("eps", 1e-8, "[0, inf)", "epsilon")
    amsgrad = R.flag("amsgrad", False, "keep the running maximum of v")
    m, v = R.state("m", 0, "first moment"), R.state("v", 0, "second moment")
    vmax = R.state("vmax", 0, "running maximum of v", exists_if=amsgrad)
    R.assign(m, b1 * m + (1 - b1) * g, "first moment")
    R.assign(v, b2 * v + (1 - b2) * g**2, "second moment")
    R.assign(vmax, maximum(vmax, v), "maximum", when=amsgrad)
    R.assign(w, w - lr * m / (sqrt(v) + eps), "update", when=~amsgrad)
    R.assign(w, w - lr * m / (sqrt(vmax) + eps), "update with the maximum", when=amsgrad)
    modules = load(R, tmp_path)
    try:
        import torch

        from optforge.runtime import triton_support
    except ImportError:  # pragma: no cover - the test extra installs both
        triton_support = None

    def oracle(p, gs, ams):
        p, m, v, vmax = p.copy(), 0 * p, 0 * p, 0 * p
        for x in gs:
            m = 0.9 * m + (1 - 0.9) * x
            v = 0.99 * v + (1 - 0.99) * x**2
            vmax = np.maximum(vmax, v)
            p = p - 0.01 * m / (np.sqrt(vmax if ams else v) + 1e-8)
        return p

    params0, grads = problem(10, np.float64)
    for ams in (False, True):
        want = [oracle(p, [gs[i] for gs in grads], ams) for i, p in enumerate(params0)]
        for fused in (False, True):
            opt = modules["numpy"].AmsgradByFlag(amsgrad=ams, fused=fused)
            ps = [p.copy() for p in params0]
            state = opt.init(ps)
            before = fused_tensors[0]
            for gs in grads:
                ps, state = opt.step(ps, gs, state)
            assert fused_tensors[0] - before == (len(grads) * len(ps) if fused else 0)
            for i, (a, b) in enumerate(zip(ps, want)):
                err = rel_error(a, b)
                assert err <= 1e-12, f"amsgrad={ams} fused={fused}: params[{i}]: relative error {err:.3g}"
        if triton_support is None:
            continue
        ps = [torch.tensor(p, requires_grad=True) for p in params0]
        calls: list = []
        with triton_support.recorded(calls):
            opt = modules["torch"].AmsgradByFlag(ps, amsgrad=ams, fused="triton")
            for gs in grads:
                for p, x in zip(ps, gs):
                    p.grad = torch.tensor(x)
                opt.step()
        assert len(calls) == len(grads), "the Triton kernels took every step"
        for i, (a, b) in enumerate(zip(ps, want)):
            err = rel_error(a.detach().numpy(), b)
            assert err <= 1e-12, f"amsgrad={ams} Triton: params[{i}]: relative error {err:.3g}"


def test_the_fused_path_takes_no_tensor_subclass():
    """Numba's kernels index a tensor's memory: a subclass (a DTensor, whose reductions span shards on other
    processes) takes the plain path."""
    torch = pytest.importorskip("torch")
    from optforge.runtime import torch_support

    class Sharded(torch.Tensor):
        pass

    w = torch.zeros(3, dtype=torch.float64)
    assert torch_support.fusable(w, w.clone()) and torch_support.fusable(torch.nn.Parameter(w), w.clone())
    assert not torch_support.fusable(w.as_subclass(Sharded), w.clone())
