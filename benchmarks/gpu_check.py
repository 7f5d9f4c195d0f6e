"""The Triton path on a GPU: its tests on CUDA, and every rule's step timed against the alternatives.

    python -m optforge.benchmarks.gpu_check --out "$OUT" --tests     # on a CUDA machine (gpu_check.sh)
    python -m optforge.benchmarks.gpu_check --out /tmp/x --params 3000 --tensors 3 --repeats 1   # on CPU

For each rule of the registry (with the benchmark's hyperparameters, ``configs.py``), on float32
parameters (``--params`` in ``--tensors`` tensors, the benchmark's layer stack), the median time of a step:

* ``triton``: the generated torch optimizer made with ``fused=True`` (on CUDA: the Triton kernels), its
  Python loop included;
* ``triton kernels``: ``triton_support.run`` alone, on the same tensors and scalars: the launches;
* ``torch``: the generated torch optimizer's plain path (``fused=False``);
* ``torch.optim foreach`` / ``torch.optim fused``: torch's own optimizer, where it computes our update
  (``configs.py``) and has that mode;
* ``limit``: an in-place ``mul_`` over as many bytes as the step must read and write
  (``compiler/traffic.py``: w, g and each per-element state read, w and the states written), the memory
  bandwidth limit; ``ratio`` is triton kernels over limit.

On CUDA, each time measured with CUDA events counts the host's gaps between launches (the Python of a
step over 200 tensors takes longer than its kernels); ``..., device time`` is the GPU's own time in the
kernels and copies of the same calls (torch.profiler), and ``device ratio`` the kernels' device time over
the limit's.

Writes ``gpu_check.json`` under ``--out`` (and, with ``--tests``, the output of ``pytest
tests/test_triton.py`` run on CUDA, ``tests.txt``). Without CUDA it runs the kernels in Triton's
interpreter on CPU (``TRITON_INTERPRET=1``: slow, use a small size), which the test suite does.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any, Callable


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _timer(device: str) -> Callable[[Callable[[], None], int], float]:
    """Median milliseconds of ``fn`` over ``repeats`` runs (CUDA events on a GPU), after one warm-up run."""
    import torch

    def time_it(fn: Callable[[], None], repeats: int) -> float:
        fn()  # compiles (Triton), creates state
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return time_it


def _device_time(fn: Callable[[], None], repeats: int) -> float:
    """Milliseconds the GPU spends in ``fn``'s kernels and copies per call (torch.profiler's device time,
    summed over ``repeats`` calls after one warm-up): the work without the host's gaps between launches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages() if e.self_device_time_total > 0)
    return total_us / 1e3 / repeats


def check_rule(rule, shapes, device: str, repeats: int) -> dict[str, Any]:
    """The step times of one rule (milliseconds), see the module's docstring."""
    import numpy as np
    import torch

    import optforge.generated.torch as gen
    from optforge.benchmarks.configs import LEARNING_RATE, config_for
    from optforge.compiler.pipeline import compile_rule
    from optforge.compiler.traffic import bytes_per_param
    from optforge.runtime import triton_support

    config = config_for(rule)
    hypers = dict(config.hypers)
    time_it = _timer(device)
    rng = np.random.default_rng(0)
    init = [torch.tensor(rng.normal(size=s), dtype=torch.float32) for s in shapes]
    grads = [torch.tensor(rng.normal(size=s), dtype=torch.float32) for s in shapes]
    n = sum(int(np.prod(s)) for s in shapes)

    def params() -> list[torch.Tensor]:
        out = [torch.nn.Parameter(p.to(device)) for p in init]
        for p, g in zip(out, grads):
            p.grad = g.to(device)
        return out

    result: dict[str, Any] = {}
    calls: list = []
    with triton_support.recorded(calls):
        opt = getattr(gen, rule.name)(params(), lr=LEARNING_RATE, **hypers, fused="triton")
        result["triton"] = time_it(opt.step, repeats)
    taken = sum(len(work) for _, work, _ in calls[-1:])
    if taken != len(shapes):
        raise RuntimeError(f"{rule.name}: the Triton kernels took {taken} of {len(shapes)} tensors")
    case, work, scalars = calls[-1]
    result["triton kernels"] = time_it(lambda: triton_support.run(case, work, scalars), repeats)
    if device == "cuda":
        result["triton kernels, device time"] = _device_time(
            lambda: triton_support.run(case, work, scalars), repeats
        )
    opt = getattr(gen, rule.name)(params(), lr=LEARNING_RATE, **hypers, fused=False)
    result["torch"] = time_it(opt.step, repeats)
    if config.torch is not None:
        for mode in ("foreach", "fused"):
            try:
                opt = config.torch.make(params(), **{mode: True})
                result[f"torch.optim {mode}"] = time_it(opt.step, repeats)
                if device == "cuda":
                    result[f"torch.optim {mode}, device time"] = _device_time(opt.step, repeats)
            except (TypeError, RuntimeError, ValueError) as e:  # no such mode for it on this device
                result[f"torch.optim {mode}"] = f"unsupported: {str(e).splitlines()[0][:120]}"
    per_param = bytes_per_param(compile_rule(rule), {"learning_rate": LEARNING_RATE, **hypers})
    buffer = torch.ones(max(1, per_param * n // 8), dtype=torch.float32, device=device)  # read + write
    result["limit"] = time_it(lambda: buffer.mul_(1.0), repeats)
    if device == "cuda":
        result["limit, device time"] = _device_time(lambda: buffer.mul_(1.0), repeats)
        result["device ratio"] = result["triton kernels, device time"] / result["limit, device time"]
    result["bytes per parameter"] = per_param
    result["ratio"] = result["triton kernels"] / result["limit"]
    return result


JAX_STEPS = 10


def _jax_device() -> str:
    import jax

    return str(jax.devices()[0].device_kind)


def check_jax(rule, shapes, repeats: int) -> dict[str, Any]:
    """Milliseconds per step of our JAX module and of optax (where ``configs.py`` names it): ``JAX_STEPS``
    steps inside one jitted ``lax.fori_loop``, as inside a training step, so per-call dispatch is not what
    is timed (params and state donated); the median over ``repeats`` calls, divided by ``JAX_STEPS``."""
    import jax
    import numpy as np
    import optax

    import optforge.generated.jax as gj
    from optforge.benchmarks.configs import LEARNING_RATE, config_for

    config = config_for(rule)
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [jax.device_put(rng.normal(size=s).astype(np.float32)) for s in shapes]

    def per_step(tx) -> float:
        def loop(params, state, grads):
            def body(_, carry):
                p, s = carry
                updates, s = tx.update(grads, s, p)
                return optax.apply_updates(p, updates), s

            return jax.lax.fori_loop(0, JAX_STEPS, body, (params, state))

        run = jax.jit(loop, donate_argnums=(0, 1))
        params = [jax.device_put(p) for p in init]
        carry = jax.block_until_ready(run(params, tx.init(params), grads))  # compiles
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            carry = jax.block_until_ready(run(*carry, grads))
            times.append((time.perf_counter() - t0) * 1e3 / JAX_STEPS)
        return statistics.median(times)

    result: dict[str, Any] = {
        "ours": per_step(getattr(gj, rule.module)(learning_rate=LEARNING_RATE, **config.hypers))
    }
    if config.optax is not None:
        result["optax"] = per_step(config.optax.make())
        result["ratio"] = result["ours"] / result["optax"]
    return result


def check_compile(rule, device: str) -> dict[str, Any]:
    """``torch.compile(opt.step)`` (inductor) on the plain path: 3 steps on five small tensors of ranks 0
    to 3 equal eager's (largest relative difference of the parameters), and the seconds the first
    compiled step took."""
    import numpy as np
    import torch

    import optforge.generated.torch as gen
    from optforge.benchmarks.configs import LEARNING_RATE, config_for

    rng = np.random.default_rng(1)
    shapes = [(), (7,), (5, 3), (2, 3, 4), (64, 33)]
    init = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(3)]
    hypers = dict(config_for(rule).hypers)

    def run(compiled: bool) -> tuple[list[np.ndarray], float]:
        params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float32, device=device)) for p in init]
        opt = getattr(gen, rule.name)(params, lr=LEARNING_RATE, **hypers, fused=False)
        step = torch.compile(opt.step) if compiled else opt.step
        first = 0.0
        for i, g in enumerate(grads):
            for p, x in zip(params, g):
                p.grad = torch.tensor(x, dtype=torch.float32, device=device)
            t0 = time.perf_counter()
            step()
            if i == 0:
                first = time.perf_counter() - t0
        return [p.detach().double().cpu().numpy() for p in params], first

    torch._dynamo.reset()
    try:
        want, _ = run(False)
        got, seconds = run(True)
    except Exception as e:  # what fails, for the report
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    worst = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) for a, b in zip(got, want))
    return {"max relative difference": worst, "first compiled step s": round(seconds, 1)}


def run_tests(
    out: pathlib.Path, select: str = "", workers: int = 0, timeout: float | None = None
) -> dict[str, Any]:
    """``pytest tests/test_triton.py`` with the kernels on CUDA (``-k select`` where given; ``workers``
    processes of pytest-xdist, which compile the kernels side by side); its output into ``tests.txt``."""
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, OPTFORGE_TRITON_DEVICE="cuda")
    env.pop("TRITON_INTERPRET", None)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton.py"]
            + (["-k", select] if select else [])
            + (["-n", str(workers)] if workers else []),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        text = "".join(x.decode() if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        (out / "tests.txt").write_text(text)
        return {"returncode": "timed out", "summary": f"stopped after {timeout} s", "seconds": timeout}
    (out / "tests.txt").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": done.returncode, "summary": last, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the folder gpu_check.json is written to")
    parser.add_argument("--params", type=int, default=16_600_000, help="parameters in all (16.6 M)")
    parser.add_argument("--tensors", type=int, default=200, help="tensors they are in (200)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per implementation")
    parser.add_argument("--rules", nargs="*", help="only these rules (default: every rule of the registry)")
    parser.add_argument("--tests", action="store_true", help="also run tests/test_triton.py on CUDA")
    parser.add_argument("--tests-k", default="", help="only the tests pytest -k selects (e.g. 'Adamax')")
    parser.add_argument("--tests-timeout", type=float, default=None, help="seconds the tests may take")
    parser.add_argument("--tests-workers", type=int, default=0, help="pytest-xdist processes for the tests")
    parser.add_argument("--compile", nargs="*", default=[], help="rules to check under torch.compile")
    parser.add_argument(
        "--jax", action="store_true", help="also time the JAX modules and optax (jitted loop)"
    )
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before a kernel is decorated: Triton's interpreter on CPU
    from optforge.benchmarks.workload import tensor_shapes
    from optforge.rules import registry

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device()
    rules = registry()
    unknown = sorted(set(args.rules or []) - set(rules))
    if unknown:
        parser.error(f"no rule named {', '.join(unknown)}; known: {', '.join(rules)}")
    shapes = tensor_shapes(args.params, args.tensors)
    import triton

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton's interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "params": sum(int(__import__("math").prod(s)) for s in shapes),
        "tensors": len(shapes),
        "repeats": args.repeats,
        "unit": "milliseconds per step (median)",
        "rules": {},
    }
    if args.tests and device == "cuda":
        report["tests"] = run_tests(out, args.tests_k, args.tests_workers, args.tests_timeout)
        print("tests", json.dumps(report["tests"]), flush=True)
    for name in args.rules or list(rules):
        report["rules"][name] = check_rule(rules[name], shapes, device, args.repeats)
        print(name, json.dumps(report["rules"][name]), flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")  # what is done so far
    for name in args.compile:
        report.setdefault("compile", {})[name] = check_compile(rules[name], device)
        print("compile", name, json.dumps(report["compile"][name]), flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.jax:
        report["jax"] = {"steps per call": JAX_STEPS, "device": _jax_device()}
        for name in args.rules or list(rules):
            report["jax"][name] = check_jax(rules[name], shapes, args.repeats)
            print("jax", name, json.dumps(report["jax"][name]), flush=True)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    failed = report.get("tests", {}).get("returncode", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
