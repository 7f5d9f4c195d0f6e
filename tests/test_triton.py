"""The Triton path (generated/triton, runtime/triton_support) equals the plain torch path.

The kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set here before Triton
compiles anything), or on a CUDA device where ``OPTFORGE_TRITON_DEVICE=cuda`` (``benchmarks/gpu_check.sh``).
Each test runs a torch optimizer made with ``fused="triton"`` (every parameter to ``triton_support.run``,
with the step's scalars the optimizer computed; chunks of 64 elements) and compares it with the same
optimizer's plain path (``fused=False``): every rule and named
configuration with no option; with ``clipnorm``, with ``global_clipnorm`` and with every option at once
(``global_clipnorm`` with the rest), the rules that show every feature and have kernels (``cases.KERNEL_MACHINERY``), tensors of ranks 0 to 3 and one of several chunks; parameters
and every stored state, float64 to 1e-12 relative, float32 to 1e-6; bfloat16 parameters with float32
state to the rounding of bfloat16.
"""

from __future__ import annotations

import contextlib
import os

DEVICE = os.environ.get("OPTFORGE_TRITON_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton decorates a kernel: the interpreter, on CPU

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from cases import KERNEL_MACHINERY, RULES, compiled, kernel_rule_configs, kernel_takes  # noqa: E402
from drivers import loss_kwargs, rel_error  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from optforge.runtime import triton_support  # noqa: E402

# the interpreter computes the lanes past a chunk's end too (0/0 there), which the kernels never store
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

STEPS = 3
BLOCK = 64  # elements per chunk: the (9, 20) tensor is three chunks, the last one partial
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (9, 20)]
SCALES = [1.0, 1e-3, 1e3, 1.0, 10.0]
OPTIONS = {
    "clipnorm": dict(clipnorm=0.5),
    "global_clipnorm": dict(global_clipnorm=1.0),
    # every option that goes with global_clipnorm (clipnorm and clipvalue exclude it)
    "everything": dict(
        global_clipnorm=1.0,
        weight_decay=0.05,
        use_ema=True,
        ema_momentum=0.7,
        ema_overwrite_frequency=2,
        loss_scale_factor=4.0,
        gradient_accumulation_steps=2,
    ),
}


@pytest.fixture(autouse=True)
def _fresh_tables():
    """Each test from an empty table cache: no test reads a table another test's tensors built."""
    triton_support._TABLES.clear()
    yield


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s) for s in SHAPES]
    grads = [[c * rng.normal(size=s) for s, c in zip(SHAPES, SCALES)] for _ in range(STEPS + 1)]
    grads[0][-1] = np.zeros(SHAPES[-1])  # a tensor whose first gradient is all zeros
    return params, grads


def run(rule, hypers: dict, dtype, *, triton: bool, count=None):
    """Final parameters and states (as float64 NumPy arrays) after ``STEPS`` steps of the torch optimizer;
    ``triton``: made with ``fused="triton"`` (``count``: the tensors the kernels took)."""
    import optforge.generated.torch as gen

    hypers = dict(hypers)
    if rule.hypers["learning_rate"].default is None:
        hypers.setdefault("learning_rate", 0.01)
    if "learning_rate" in hypers:
        hypers["lr"] = hypers.pop("learning_rate")
    params0, grads = problem()
    params = [torch.tensor(p, dtype=dtype, device=DEVICE, requires_grad=True) for p in params0]
    calls: list = []
    with triton_support.recorded(calls, block=BLOCK) if triton else contextlib.nullcontext():
        opt = getattr(gen, rule.name)(params, **hypers, fused="triton" if triton else False)
        for k, g in enumerate(grads[:STEPS]):
            for p, x in zip(params, g):
                p.grad = torch.tensor(x, dtype=dtype, device=DEVICE)
            opt.step(**loss_kwargs(rule, k))
    if count is not None:
        count[0] += sum(len(work) for _, work, _ in calls)
    states = {
        (i, k): v.detach().double().cpu().numpy()
        for i, p in enumerate(params)
        for k, v in opt.state[p].items()
    }
    return [p.detach().double().cpu().numpy() for p in params], states


def expected_tensors(rule, hypers: dict) -> int:
    """The tensors the Triton path takes in the run: every one, or those whose step is element-wise (a
    rule that reads the shape: ``cases.kernel_takes``), none of them where the step also reduces over all
    tensors (the kernels' sum would miss the others)."""
    taken = sum(kernel_takes(rule, s, hypers) for s in SHAPES)
    every = hypers.get("gradient_accumulation_steps") or 1
    updates = sum((k + 1) % every == 0 for k in range(STEPS))  # the calls that clip (a call that only
    # accumulates gradients runs no reduction over all tensors)
    if taken < len(SHAPES) and hypers.get("global_clipnorm") is not None:
        return (STEPS - updates) * taken
    return STEPS * taken


def compare(rule, hypers: dict, dtype, tol: float) -> None:
    count = [0]
    want_p, want_s = run(rule, hypers, dtype, triton=False)
    got_p, got_s = run(rule, hypers, dtype, triton=True, count=count)
    assert count[0] == expected_tensors(rule, hypers), (
        f"the Triton path took {count[0]} tensors, not the {expected_tensors(rule, hypers)} it takes"
    )
    where = f"{rule.name} {hypers} {dtype}"
    for i, (a, b) in enumerate(zip(got_p, want_p)):
        err = rel_error(a, b)
        assert err <= tol, f"{where}: params[{i}] (shape {SHAPES[i]}): relative error {err:.3g} > {tol:g}"
    assert set(got_s) == set(want_s), f"{where}: states {sorted(got_s)} instead of {sorted(want_s)}"
    for key, b in want_s.items():
        err = rel_error(got_s[key], b)
        assert err <= tol, f"{where}: state {key[1]} of params[{key[0]}]: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("rule, name, cfg", kernel_rule_configs())
def test_triton_equals_plain(rule, name, cfg):
    compare(rule, cfg, torch.float64, 1e-12)
    compare(rule, cfg, torch.float32, 1e-6)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("rule", KERNEL_MACHINERY, ids=[r.name for r in KERNEL_MACHINERY])
def test_triton_equals_plain_with_keras_options(rule, option):
    compare(rule, OPTIONS[option], torch.float64, 1e-12)
    compare(rule, OPTIONS[option], torch.float32, 1e-6)


@pytest.mark.parametrize("rule", KERNEL_MACHINERY, ids=[r.name for r in KERNEL_MACHINERY])
def test_triton_mixed_precision(rule):
    """bfloat16 parameters and gradients, float32 state: the parameters within a bfloat16 rounding a step
    (float32 arithmetic in another order may round a parameter to the neighbouring bfloat16 value) for each
    time the plain path writes it in a step (it rounds to bfloat16 after each: TorchAdamW's decay, then its
    update; the kernel rounds once), the states, float32 from the same bfloat16 gradients, to float32's
    rounding."""
    program = compiled(rule)
    writes = max(sum(a.target == "w" for a in case.body) for case in (program.inner or program).cases)
    count = [0]
    want_p, want_s = run(rule, {}, torch.bfloat16, triton=False)
    got_p, got_s = run(rule, {}, torch.bfloat16, triton=True, count=count)
    assert count[0] == expected_tensors(rule, {})
    for i, (a, b) in enumerate(zip(got_p, want_p)):
        err = rel_error(a, b)
        assert err <= STEPS * writes * 2**-7, f"{rule.name}: bfloat16 params[{i}]: relative error {err:.3g}"
    for key, b in want_s.items():
        err = rel_error(got_s[key], b)
        assert err <= 1e-5, (
            f"{rule.name}: float32 state {key[1]} of params[{key[0]}]: relative error {err:.3g}"
        )


# -- the choice of path --------------------------------------------------------------------------


def _steps(rule, params, fused, calls, **hypers):
    """Three steps of the torch optimizer over ``params`` (their gradients set), recording the Triton calls."""
    import optforge.generated.torch as gen

    if rule.hypers["learning_rate"].default is None:
        hypers.setdefault("lr", 0.01)
    with triton_support.recorded(calls, block=BLOCK):
        opt = getattr(gen, rule.name)(params, fused=fused, **hypers)
        for _ in range(STEPS):
            opt.step()
    return opt


def _params(dtypes, transposed: bool = False):
    """The parameters (of ``SHAPES``, in ``dtypes``) and their gradients; ``transposed``: the third one a
    transposed view (the same values, not contiguous)."""
    rng = np.random.default_rng(3)
    out = []
    for i, (shape, dtype) in enumerate(zip(SHAPES, dtypes)):
        w, g = (torch.tensor(rng.normal(size=shape), device=DEVICE).to(dtype) for _ in range(2))
        if transposed and i == 2:
            w, g = w.t().contiguous().t(), g.t().contiguous().t()
        w.requires_grad_()
        w.grad = g
        out.append(w)
    return out


@pytest.mark.parametrize(
    "case",
    ["one_not_contiguous", "two_dtypes_global_clipnorm", "two_dtypes", "fused_true", "fused_default"],
)
def test_a_group_goes_whole_to_the_kernels_or_whole_to_the_plain_path(case):
    """``fused="triton"`` takes a group whose every parameter the kernels take, or none of it: a parameter
    they cannot index (a transposed view), or two dtypes in a step that sums over all tensors
    (``global_clipnorm``: the kernels' sum is one launch's), leave the group on the plain path; two dtypes
    without it go to the kernels, one launch each. ``fused=True`` is Numba's path on CPU tensors (in the
    interpreter too), the kernels' on CUDA ones; the default (None) is the plain path on CPU tensors and
    the kernels on CUDA ones. The parameters equal the plain path's (float64 to 1e-12; float32 to 1e-6)."""
    rule = KERNEL_MACHINERY[0]
    dtypes = [torch.float64] * len(SHAPES)
    hypers: dict = {}
    fused = "triton"
    if case.startswith("two_dtypes"):
        dtypes[1] = dtypes[3] = torch.float32
    if case.endswith("global_clipnorm"):
        hypers["global_clipnorm"] = 1.0
    if case == "fused_true":
        fused = True
    if case == "fused_default":
        fused = None
    transposed = case == "one_not_contiguous"
    want = _params(dtypes, transposed)
    _steps(rule, want, False, [], **hypers)
    got = _params(dtypes, transposed)
    calls: list = []
    _steps(rule, got, fused, calls, **hypers)
    # fused=True: Numba's path on CPU tensors, the kernels on CUDA ones; the default: the plain path on CPU
    # tensors (the interpreter's too), the kernels on CUDA ones
    expect_triton = case == "two_dtypes" or (case in ("fused_true", "fused_default") and DEVICE == "cuda")
    assert bool(calls) == expect_triton, f"{case}: {len(calls)} calls of the Triton kernels"
    if expect_triton:
        assert all(len(work) == len(SHAPES) for _, work, _ in calls), "every tensor of the group each step"
    for i, (a, b) in enumerate(zip(got, want)):
        tol = 1e-12 if a.dtype == torch.float64 else 1e-6
        err = rel_error(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())
        assert err <= tol, f"{case}: params[{i}] ({a.dtype}): relative error {err:.3g} > {tol:g}"


def test_fused_is_checked_and_a_copy_keeps_the_triton_path():
    import copy

    import optforge.generated.torch as gen

    rule = KERNEL_MACHINERY[0]
    lr = {"lr": 0.01} if rule.hypers["learning_rate"].default is None else {}
    with pytest.raises(
        TypeError, match=r"`fused` must be None, True, False or 'triton'. Received: fused='cuda'"
    ):
        getattr(gen, rule.name)(_params([torch.float64] * len(SHAPES)), fused="cuda", **lr)
    params = _params([torch.float64] * len(SHAPES))
    opt = _steps(rule, params, "triton", [])
    twin = copy.deepcopy(opt)
    assert twin.fused == "triton"
    calls: list = []
    with triton_support.recorded(calls, block=BLOCK):
        twin.step()
    assert len(calls) == 1, "the copy steps on the Triton kernels"


# -- the tables ------------------------------------------------------------------------------------


def _case():
    return triton_support.load(RULES["Adamax"].module).UPDATE_CASE_0


def test_chunk_table_covers_every_element_once():
    sizes = [0, 1, 63, 64, 65, 200]
    items = [
        (torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE), None, None, None, None) for n in sizes
    ]
    t = triton_support.tables(_case(), items, block=64)
    chunks = t.chunks.cpu().numpy()[: t.n_chunks]
    tensors = t.tensors.cpu().numpy()
    assert t.n_chunks == sum((n + 63) // 64 for n in sizes) and t.n_tensors == len(sizes)
    for i, n in enumerate(sizes):
        first, count = tensors[i, 0], tensors[i, 1]
        mine = chunks[first : first + count]
        assert (mine[:, 0] == i).all(), f"tensor {i}: chunks {mine} of another tensor"
        covered = [x for _, start, length in mine for x in range(start, start + length)]
        assert covered == list(range(n)), f"tensor {i} of {n} elements: chunks cover {covered}"
        assert all(0 < length <= 64 for _, _, length in mine)
        assert tensors[i, 2] == items[i][0].data_ptr() and tensors[i, 3] == items[i][1].data_ptr()
        assert (tensors[i, 4:] == 0).all(), "a state not kept has address 0"


def test_tables_are_kept_until_the_tensors_change():
    w, g = torch.zeros(100, device=DEVICE), torch.ones(100, device=DEVICE)
    item = (w, g, torch.zeros_like(w), torch.zeros_like(w), None, None)
    first = triton_support.tables(_case(), [item], block=64)
    assert triton_support.tables(_case(), [item], block=64) is first
    new_g = torch.ones(100, device=DEVICE)  # a new gradient tensor (zero_grad(set_to_none=True))
    again = triton_support.tables(_case(), [(w, new_g, *item[2:])], block=64)
    assert again is not first and again.tensors.cpu()[0, 3].item() == new_g.data_ptr()


def test_takes_only_what_the_kernels_can_index():
    w = torch.zeros(4, 5, device=DEVICE)
    g = torch.zeros(4, 5, device=DEVICE)
    assert triton_support.takes(w, g, torch.zeros_like(w), None)
    assert not triton_support.takes(w.t(), g), "a transposed view is not contiguous"
    assert not triton_support.takes(w, torch.zeros(5, device=DEVICE)), "a gradient of another size"
    assert not triton_support.takes(w, g, torch.zeros_like(w), torch.zeros_like(w, dtype=torch.float64))
    assert not triton_support.takes(w.int(), g), "an integer parameter"

    class Sharded(torch.Tensor):  # a subclass, as DTensor is: its reductions span shards elsewhere
        pass

    assert not triton_support.takes(w.as_subclass(Sharded), g), "a tensor subclass"
    assert triton_support.takes(torch.nn.Parameter(w), g), "a parameter"


def test_gpu_check_runs_on_cpu_in_a_reduced_size(tmp_path):
    """benchmarks/gpu_check.py, as the lead runs it on a GPU, here in Triton's interpreter: a rule with
    torch.optim references and one with per-tensor state, two small tensors, one timed step each."""
    import json

    from optforge.benchmarks import gpu_check

    code = gpu_check.main(
        ["--out", str(tmp_path), "--params", "2000", "--tensors", "2", "--repeats", "1"]
        + ["--rules", "Adagrad", "NovoGrad"]
    )
    assert code == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        report["params"] > 0 and report["tensors"] == 2 and sorted(report["rules"]) == ["Adagrad", "NovoGrad"]
    )
    for name, times in report["rules"].items():
        for key in ("triton", "triton kernels", "torch", "limit", "ratio"):
            assert isinstance(times[key], float) and times[key] > 0, (name, key, times)
        assert times["bytes per parameter"] == 20, (name, times)  # w, g and one state: read 3, write 2
    assert "torch.optim foreach" in report["rules"]["Adagrad"]


_COMPILE = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from optforge.runtime import triton_support
module = triton_support.load("novograd")
signature = {"chunks": "*i64", "tensors": "*i64", "k_": "*fp32", "tvals": "*fp64", "gvals": "*fp64",
             "partials": "*fp64", "n_chunks": "i32"}
types = dict(NT=3, DT=tl.float32, W_DT=tl.bfloat16, G_DT=tl.bfloat16, S_DT=tl.float32, BLOCK=1024)
for phase in module.UPDATE_CASE_0.phases:
    constants = {**{f: True for f in phase.flags}, **types}
    signature_ = {**signature, **{k: "constexpr" for k in constants}}
    source = triton.compiler.ASTSource(fn=phase.kernel, signature=signature_, constexprs=constants)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    print(phase.kernel.__name__, ".entry " + phase.kernel.__name__ in ptx)
"""


def test_kernels_compile_for_an_h100_without_one():
    """Triton's compiler, not its interpreter (which takes more than the compiler does), on one rule's
    kernels: NovoGrad (reductions over one tensor and over all tensors, per-tensor state), every flag on,
    bfloat16 parameters with float32 state, to PTX for sm_90 (Triton's own ptxas; no GPU needed). In a
    process of its own: this one runs the kernels in the interpreter."""
    import subprocess
    import sys

    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns where it is unset (3.10 changes the default)
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = dict(line.split() for line in done.stdout.splitlines())
    kernels = [phase.kernel.__name__ for phase in triton_support.load("novograd").UPDATE_CASE_0.phases]
    assert printed == {k: "True" for k in kernels}, done.stdout


def test_run_says_which_scalars_are_missing():
    w = torch.zeros(3, device=DEVICE)
    work = [
        (
            w,
            torch.ones(3, device=DEVICE),
            torch.zeros(3, device=DEVICE),
            torch.zeros(3, device=DEVICE),
            None,
            None,
        )
    ]
    with pytest.raises(
        TypeError, match=r"the step's scalars lack .*beta_1.*this case reads .*Received: lr, t"
    ):
        triton_support.run(_case(), work, {"lr": 0.1, "t": 1})


def test_a_state_read_only_by_a_reduction_over_all_tensors_is_loaded_there(tmp_path):
    """A state that only a reduction over all tensors reads (a snapshot of the initial parameters, kept by
    ``x0 <- x0``, as Prodigy's): the partial-sum kernel read it without loading it (NameError in every
    step; a user's rule found it; Numba's kernels loaded it). Triton's kernels equal the plain torch path."""
    from drivers import assert_close, problem
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, global_sum, w

    r = Rule("SnapshotInAGlobalSum", title="a step scaled by the gradient's agreement with the way back")
    lr = r.learning_rate(0.1)
    x0 = r.state("x0", w, "the initial parameters")
    agreement = r.let("agreement", global_sum(g * (x0 - w)), "over all tensors")
    r.assign(w, w - lr * g * (1 + agreement / 100), "update")
    r.assign(x0, x0, "kept")
    mods = load(r, tmp_path)
    params0, grads = problem(3, shapes=[(5,), (3, 4)], scales=[1.0, 1.0])
    want = steps(mods, r, params0, grads, "torch", lr=0.1)
    assert_close(steps(mods, r, params0, grads, "torch triton", lr=0.1), want, 1e-14, "triton")


def test_a_once_per_step_value_printed_with_numpy_s_functions_runs(tmp_path):
    """A user's ``gn = global_norm(g)`` read through ``maximum``: the once-per-step value ``Max(1, gn /
    max_grad_norm)`` is computed in ``prepare`` by the NumPy printer, ``np.maximum``, and the module imported
    no NumPy (a NameError at the first step; a user's rule found it). Equal to the plain torch path."""
    from drivers import assert_close, problem
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, global_norm, maximum, tensor_norm, w

    r = Rule("UserClipGlobal", title="clipped to a global norm, then per-tensor normalised")
    lr = r.learning_rate(0.1)
    largest = r.hyper("max_grad_norm", 1.0, "(0, inf)", "the largest global gradient norm")
    gn = r.let("gn", global_norm(g), "the global gradient norm")
    r.assign(g, g / maximum(gn / largest, 1), "global clip")
    r.assign(w, w - lr * g / (tensor_norm(g) + 1), "update")
    mods = load(r, tmp_path)
    params0, grads = problem(3, shapes=[(5,), (3, 4)], scales=[1.0, 10.0])
    want = steps(mods, r, params0, grads, "torch", lr=0.1)
    assert_close(steps(mods, r, params0, grads, "torch triton", lr=0.1), want, 1e-14, "triton")


def test_a_power_of_a_block_in_the_kernels(tmp_path):
    """A power other than 2 and +-1/2 (a cube root, MADGRAD's; an odd power of a negative number; a power
    read from a hyperparameter): Triton has no ``**`` of blocks, and the kernel printed one (a TypeError
    at its first step; a helper's MADGRAD found it). Every path, Triton's (``fpow``) and Numba's included,
    equals a NumPy transcription in float64."""
    from drivers import assert_close, problem
    from rulekit import load, steps

    from optforge.compiler.dsl import Rule, g, w

    r = Rule("UserPowers", title="powers")
    lr = r.learning_rate(0.1)
    p = r.hyper("p", 1.5, "(0, inf)", "a power")
    s = r.state("s", 0, "sum of squares")
    r.assign(s, s + g**2, "sum of squares")
    r.assign(w, w - lr * (g**3 / (1 + s ** (1.0 / 3.0)) + 0.1 * s**p / (1 + s) ** 2.5), "update")
    mods = load(r, tmp_path)
    shapes = [(), (7,), (3, 4)]
    params0, grads = problem(5, shapes=shapes, scales=[1.0, 0.5, 2.0], zero_first=False)
    want = [x.copy() for x in params0]
    sums = [np.zeros(s_) for s_ in shapes]
    for gs in grads:
        for i, x in enumerate(gs):
            sums[i] = sums[i] + x**2
            want[i] = want[i] - 0.1 * (
                x**3 / (1 + np.cbrt(sums[i])) + 0.1 * sums[i] ** 1.5 / (1 + sums[i]) ** 2.5
            )
    assert any((x < 0).any() for gs in grads for x in gs), "no negative gradient: the odd power is not tested"
    for path in ("numpy", "numpy fused", "jax", "torch", "torch fused", "torch triton"):
        hypers = {"lr": 0.1} if path.startswith("torch") else {}
        assert_close(steps(mods, r, params0, grads, path, **hypers), want, 1e-12, path)
