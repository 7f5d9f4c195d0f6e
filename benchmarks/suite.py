"""One benchmark run: bandwidth, every rule's implementations (back-to-back and cold-cache), import times."""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from typing import Callable

from optforge.compiler.dsl import Rule
from optforge.compiler.pipeline import compile_rule
from optforge.compiler.traffic import bytes_per_param

from . import report
from .configs import LEARNING_RATE, config_for
from .measure import (
    MIB,
    CacheSweeper,
    CpuMonitor,
    ProbeRunner,
    Timing,
    import_times,
    machine_facts,
    measure_bandwidth,
)
from .runners import Candidate, Unsupported, candidates, torch_default_mode
from .workload import Size, Workload, make_workload


@dataclass(frozen=True)
class Options:
    """What to run: the size, the rules (None: all), the timed steps, and the auxiliary measurements."""

    size: Size
    rules: list[str] | None = None
    repeats: int | None = None  # None: the size's
    warmup: int = 2
    seed: int = 0
    bandwidth_bytes: int = 256 * MIB
    import_repeats: int = 3


def select_rules(names: list[str] | None) -> list[Rule]:
    """The registry's rules named (by name or module, e.g. ``Nadam`` or ``novograd_tf1``), or all of them."""
    from optforge.rules import select

    return select(names)


def run(options: Options, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """Run the benchmark; returns the results (see ``report.write`` for the files made from them)."""
    started, monitor = time.perf_counter(), CpuMonitor()
    log = _timestamped(log, started)
    size, repeats = options.size, options.repeats or options.size.repeats
    rules = select_rules(options.rules)
    _import_frameworks()
    workload = make_workload(size.n_params, size.n_tensors, options.seed)
    log(f"workload: {workload.n_params:,} float32 parameters in {len(workload.params)} tensors")
    bandwidth = measure_bandwidth(options.bandwidth_bytes)
    log(f"bandwidth: {bandwidth.best / 1e9:.1f} GB/s ({bandwidth.method})")
    if report.busy(monitor.report()):
        log("warning: other processes are using the CPU; timings will be unreliable")
    rule_facts = {rule.name: _rule_facts(rule, workload, bandwidth.best) for rule in rules}
    sweeper = CacheSweeper(size.sweep_mib * MIB)
    rows = []
    gc.collect()
    gc.freeze()  # what exists now lives to the end: collecting after each implementation need not scan it
    try:
        for rule in rules:
            facts = rule_facts[rule.name]
            probe = ProbeRunner(bandwidth.method, facts["bytes_per_param"] * workload.n_params)
            measured, probe_timing = measure_rule(
                candidates(rule, config_for(rule)), workload, repeats, options.warmup, sweeper, probe
            )
            _set_limit(facts, measured, probe_timing)
            for row in measured:
                rows.append(row | {"limit_ms": facts["limit_ms"]})
                log(f"{rule.name:>14} {row['implementation']:<30} {report.row_summary(row)}")
            log(f"{rule.name:>14} {'limit':<30} {_ms_text(facts['limit_ms'])} ms ({facts['limit_from']})")
    finally:
        gc.unfreeze()
    imports = import_times(["numpy", "torch", "jax"], options.import_repeats)
    log("import times measured")
    results = {
        "size": size.name,
        "workload": {
            "n_params": workload.n_params,
            "n_tensors": len(workload.params),
            "seed": workload.seed,
            "dtype": "float32",
            "learning_rate": LEARNING_RATE,
            "repeats": repeats,
            "warmup": options.warmup,
            "cold_sweep_bytes": sweeper.words.nbytes,
            "shapes": [list(s) for s in workload.shapes],
        },
        "machine": machine_facts()
        | {"torch_default_mode_cpu": torch_default_mode(), "load_during_run": monitor.report()},
        "bandwidth": {
            "best_gb_s": bandwidth.best / 1e9,
            "method": bandwidth.method,
            "methods_gb_s": {k: v / 1e9 for k, v in bandwidth.methods.items()},
            "buffer_bytes": bandwidth.buffer_bytes,
        },
        "imports": imports,
        "rules": rule_facts,
        "rows": report.with_ratios(rows),
    }
    results["goals"] = report.goals(results)
    results["wall_s"] = time.perf_counter() - started
    return results


def _import_frameworks() -> None:
    """Import every backend before anything is timed (the first implementation of each would pay for it)."""
    try:
        import optforge.generated.jax  # noqa: F401
        import optforge.generated.numpy  # noqa: F401
        import optforge.generated.torch  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"the benchmark needs NumPy, torch, JAX and optax (pip install 'optforge[all]'): {e}"
        ) from e


def _timestamped(log: Callable[[str], None], started: float) -> Callable[[str], None]:
    return lambda line: log(f"[{time.perf_counter() - started:5.1f} s] {line}")


def _set_limit(facts: dict, rows: list[dict], probe: Timing) -> None:
    """A rule's limit: the probe's time to move the rule's bytes, measured in the same rounds as the
    implementations, or the fastest implementation's time where that is shorter (a limit is a bound)."""
    facts["probe_ms"] = 1e3 * probe.median
    facts["limit_ms"], facts["limit_from"] = facts["probe_ms"], "the probe"
    for row in rows:
        if row["status"] == "ok" and row["median_ms"] < facts["limit_ms"]:
            facts["limit_ms"], facts["limit_from"] = row["median_ms"], row["implementation"]


def _ms_text(ms: float) -> str:
    return f"{ms:.3g}"


def _rule_facts(rule: Rule, workload: Workload, bandwidth: float) -> dict:
    """Bytes per parameter from the compiler's state analysis, and the step time they need at ``bandwidth``."""
    config = config_for(rule)
    per_param = bytes_per_param(compile_rule(rule), config.hypers, itemsize=4)
    return {
        "hypers": {"learning_rate": LEARNING_RATE, **config.hypers},
        "bytes_per_param": per_param,
        "limit_ms": 1e3 * per_param * workload.n_params / bandwidth,
        "note": config.note,
    }


def measure_rule(
    candidates: list[Candidate],
    workload: Workload,
    repeats: int,
    warmup: int,
    sweeper: CacheSweeper,
    probe: ProbeRunner,
) -> tuple[list[dict], Timing]:
    """A rule's rows (every implementation's step times in ms, or why it was skipped) and the probe's times.

    The implementations and the bandwidth probe take turns, one timed step each per round (in a rotating
    order), so that a slow phase of a shared machine falls on all of them alike. The back-to-back rounds
    come first; in the cold rounds a large buffer is read before each step.
    """
    rows, runners = [], []
    monitor = CpuMonitor()
    for candidate in candidates:
        row = {
            "rule": candidate.rule,
            "implementation": candidate.name,
            "kind": candidate.kind,
            "framework": candidate.framework,
            "note": candidate.note,
        }
        try:
            runners.append((row, candidate.make(workload)))
        except Unsupported as e:
            row |= {"status": "skipped", "note": str(e)}
        rows.append(row)
    runners.append(({}, probe))
    for _ in range(warmup):
        for _, runner in runners:
            runner.step()
    warm = _rounds(runners, repeats, None)
    cold = _rounds(runners, repeats, sweeper)
    load = monitor.report()
    runners.pop()
    for k, (row, _) in enumerate(runners):
        row |= {
            "status": "ok",
            "load": load,
            "median_ms": 1e3 * warm[k].median,
            "min_ms": 1e3 * warm[k].min,
            "max_ms": 1e3 * warm[k].max,
            "cold_median_ms": 1e3 * cold[k].median,
            "cold_min_ms": 1e3 * cold[k].min,
            "cold_max_ms": 1e3 * cold[k].max,
        }
    del runners
    gc.collect()
    return rows, warm[-1]


def _rounds(runners: list, repeats: int, before_each: Callable[[], None] | None) -> list[Timing]:
    """``repeats`` rounds of one timed step per runner, the order rotating each round; ``before_each``
    (untimed) runs before each step. The garbage collector is off while timing."""
    seconds: list[list[float]] = [[] for _ in runners]
    gc.disable()
    try:
        for r in range(repeats):
            for j in range(len(runners)):
                k = (r + j) % len(runners)
                if before_each is not None:
                    before_each()
                start = time.perf_counter()
                runners[k][1].step()
                seconds[k].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return [Timing.of(s) for s in seconds]
