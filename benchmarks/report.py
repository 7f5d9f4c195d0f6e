"""Ratios, goals and the report: a Markdown document (tables and goals) and the JSON of the whole run."""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .runners import OURS, REFERENCE

FUSED = ("numpy fused", "torch fused")
#: other processes using more than this many cores on average make the timings unreliable
BUSY_CORES = 0.25


def row_summary(row: dict) -> str:
    """One line for the progress log."""
    if row["status"] != "ok":
        return f"skipped: {row['note']}"
    return f"{_ms(row['median_ms'])} ms (cold {_ms(row['cold_median_ms'])} ms)"


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each measured row with its ratios to the rule's bandwidth limit and to the rule's fastest reference."""
    best = best_references(rows)
    out = []
    for row in rows:
        if row["status"] == "ok":
            ref = best.get(row["rule"])
            row = row | {
                "ratio_to_limit": row["median_ms"] / row["limit_ms"],
                "cold_ratio_to_limit": row["cold_median_ms"] / row["limit_ms"],
                "best_reference": ref and ref["implementation"],
                "ratio_to_best_reference": ref and row["median_ms"] / ref["median_ms"],
            }
        out.append(row)
    return out


def best_references(rows: list[dict]) -> dict[str, dict]:
    """rule -> its fastest measured reference (back-to-back median)."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["kind"] == REFERENCE and row["status"] == "ok":
            if row["rule"] not in best or row["median_ms"] < best[row["rule"]]["median_ms"]:
                best[row["rule"]] = row
    return best


# ------------------------------------------------------------------------------------------------
# goals


@dataclass(frozen=True)
class Goal:
    """A performance goal: for each rule, named ratios (from its measured rows) compared with ``target``."""

    text: str
    target: float
    strict: bool  # value < target (else <=)
    values: Callable[[dict[str, dict]], dict[str, float]]  # implementation -> row, of one rule
    rules: frozenset[str] | None = None  # None: every rule

    @property
    def comparison(self) -> str:
        return "<" if self.strict else "<="

    def check(self, value: float) -> bool:
        return (operator.lt if self.strict else operator.le)(value, self.target)


def _of(names: tuple[str, ...], key: str) -> Callable[[dict[str, dict]], dict[str, float]]:
    return lambda rows: {name: rows[name][key] for name in names if name in rows}


def _versus(ours: str, pick: Callable[[dict], bool]) -> Callable[[dict[str, dict]], dict[str, float]]:
    """Our implementation's median over the fastest reference that ``pick`` accepts."""

    def values(rows: dict[str, dict]) -> dict[str, float]:
        refs = [r for r in rows.values() if r["kind"] == REFERENCE and pick(r)]
        if ours not in rows or not refs:
            return {}
        ref = min(refs, key=lambda r: r["median_ms"])
        return {f"{ours} / {ref['implementation']}": rows[ours]["median_ms"] / ref["median_ms"]}

    return values


def _torch_optim(row: dict) -> bool:
    return row["framework"] == "torch"


def _torch_default(row: dict) -> bool:
    return row["framework"] == "torch" and row["implementation"].endswith("(default)")


def _optax(row: dict) -> bool:
    return row["framework"] == "jax"


GOALS = (
    Goal("fused path, back-to-back: x the bandwidth limit", 1.2, False, _of(FUSED, "ratio_to_limit")),
    Goal("fused path, cold cache: x the bandwidth limit", 1.4, False, _of(FUSED, "cold_ratio_to_limit")),
    Goal("torch fused vs torch.optim's fastest mode", 1.0, False, _versus("torch fused", _torch_optim)),
    Goal(
        "torch fused vs torch.optim's fastest mode (NAdam, Adamax: 2x faster)",
        0.5,
        False,
        _versus("torch fused", _torch_optim),
        frozenset({"Nadam", "Adamax"}),
    ),
    Goal("torch (no fused path) vs torch.optim's default mode", 1.0, True, _versus("torch", _torch_default)),
    Goal("jax vs optax", 1.0, False, _versus("jax", _optax)),
    Goal("numpy (no fused path): x the bandwidth limit", 3.5, False, _of(("numpy",), "ratio_to_limit")),
)


def goals(results: dict) -> list[dict]:
    """Every goal evaluated on every rule it applies to; a goal with nothing to evaluate says so once."""
    by_rule: dict[str, dict[str, dict]] = {}
    for row in results["rows"]:
        if row["status"] == "ok":
            by_rule.setdefault(row["rule"], {})[row["implementation"]] = row
    out = []
    for goal in GOALS:
        entries = [
            _verdict(goal, rule, name, value)
            for rule, rows in by_rule.items()
            if goal.rules is None or rule in goal.rules
            for name, value in goal.values(rows).items()
        ]
        out += entries or [_verdict(goal, None, None, None)]
    return out


def _verdict(goal: Goal, rule: str | None, compared: str | None, value: float | None) -> dict:
    """A goal on one rule (met: None where nothing was measured)."""
    return {
        "goal": goal.text,
        "rule": rule,
        "compared": compared,
        "value": value,
        "comparison": goal.comparison,
        "target": goal.target,
        "met": None if value is None else goal.check(value),
    }


def _verdict_text(entry: dict) -> str:
    if entry["met"] is None:
        return "not evaluated (not measured in this run)"
    margin = abs(entry["target"] - entry["value"]) / entry["target"]
    return f"met, {margin:.0%} margin" if entry["met"] else f"**not met**, {margin:.0%} over"


# ------------------------------------------------------------------------------------------------
# Markdown


def _ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _x(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def results_table(results: dict) -> str:
    """The main table: one line per rule and implementation."""
    lines = []
    for r in results["rows"]:
        name = r["implementation"] if r["kind"] == OURS else f"_{r['implementation']}_"
        if r["status"] != "ok":
            lines.append([r["rule"], name, "", "", "", "", "", "", f"skipped: {r['note']}"])
            continue
        lines.append(
            [
                r["rule"],
                name,
                _ms(r["median_ms"]),
                f"{_ms(r['min_ms'])}-{_ms(r['max_ms'])}",
                _x(r["ratio_to_limit"]),
                _x(r["ratio_to_best_reference"]),
                _ms(r["cold_median_ms"]),
                _x(r["cold_ratio_to_limit"]),
                "; ".join(filter(None, [r["note"], busy(r["load"]) and _busy_text(r["load"])])),
            ]
        )
    header = ["rule", "implementation", "median ms", "min-max ms", "x limit", "x best ref"]
    return _table(header + ["cold ms", "cold x limit", "note"], lines)


def rules_table(results: dict) -> str:
    """Per rule: the configuration, the bytes a step moves per parameter, the limit and the best reference."""
    best = best_references(results["rows"])
    lines = []
    for rule, facts in results["rules"].items():
        ref = best.get(rule)
        hypers = ", ".join(f"{k}={v}" for k, v in facts["hypers"].items())
        ref_text = f"{ref['implementation']} ({_ms(ref['median_ms'])} ms)" if ref else facts["note"] or "none"
        limit = f"{_ms(facts['limit_ms'])} ({facts['limit_from']})"
        lines.append([rule, hypers, str(facts["bytes_per_param"]), limit, ref_text])
    return _table(["rule", "configuration", "bytes/param", "limit ms (from)", "best reference"], lines)


def imports_table(results: dict) -> str:
    lines = [
        [
            backend,
            f"{facts['framework_ms']:.0f}",
            f"{facts['overhead_ms']:.0f}",
            ", ".join(facts["imports_sympy_or_jinja2"]) or "neither",
        ]
        for backend, facts in results["imports"].items()
    ]
    header = ["backend", "framework import ms", "+ optforge.generated ms", "SymPy / jinja2 imported"]
    return _table(header, lines)


def goals_summary(results: dict) -> str:
    """Per goal: on how many rule/implementation pairs it is met, and the worst case."""
    lines = []
    for goal in GOALS:
        entries = [g for g in results["goals"] if g["goal"] == goal.text and g["met"] is not None]
        if not entries:
            lines.append([goal.text, f"{goal.comparison} {goal.target}", "not evaluated", ""])
            continue
        worst = max(entries, key=lambda g: g["value"])
        met = sum(g["met"] for g in entries)
        lines.append(
            [
                goal.text,
                f"{goal.comparison} {goal.target}",
                f"{met} of {len(entries)}",
                f"{worst['value']:.2f} ({worst['rule']}, {worst['compared']})",
            ]
        )
    return _table(["goal", "target", "met", "worst"], lines)


def goals_table(results: dict) -> str:
    lines = [
        [
            g["goal"],
            g["rule"] or "",
            g["compared"] or "",
            "" if g["value"] is None else f"{g['value']:.2f}",
            f"{g['comparison']} {g['target']}",
            _verdict_text(g),
        ]
        for g in results["goals"]
    ]
    return _table(["goal", "rule", "compared", "value", "target", "result"], lines)


def busy(load: dict[str, float] | None) -> bool:
    """Whether other processes or the hypervisor took more than ``BUSY_CORES`` cores (a ``CpuMonitor`` report)."""
    return load is not None and load["other_processes_cores"] + load["stolen_cores"] > BUSY_CORES


def _busy_text(load: dict[str, float]) -> str:
    return f"busy: {load['other_processes_cores'] + load['stolen_cores']:.2f} cores taken by other work"


def load_warning(results: dict) -> str | None:
    """A warning when other processes or the hypervisor took CPU time during the run."""
    load = results["machine"]["load_during_run"]
    if not busy(load):
        return None
    rows = sum(busy(r.get("load")) for r in results["rows"])
    return (
        f"**Warning: the machine was busy** (other processes used {load['other_processes_cores']:.2f} cores on "
        f"average, the hypervisor stole {load['stolen_cores']:.2f}; {rows} rows were measured while busy, "
        "marked in their note): those timings are unreliable; run again on an idle machine."
    )


def markdown(results: dict) -> str:
    """The whole report."""
    w, m, bw = results["workload"], results["machine"], results["bandwidth"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    methods = ", ".join(f"{k} {v:.1f}" for k, v in bw["methods_gb_s"].items())
    return "\n\n".join(
        [
            f"# optforge step benchmark ({results['size']})",
            f"{w['n_params']:,} float32 parameters in {w['n_tensors']} tensors (seed {w['seed']}); "
            f"median of {w['repeats']} steps after {w['warmup']} warm-up steps; a rule's implementations "
            "take turns, one step each per round, so that a slow phase of the machine falls on all of them. Cold: a "
            f"{w['cold_sweep_bytes'] >> 20} MiB buffer is read between steps (untimed).\n\n"
            f"Machine: {m['cpu']}, {m['cpu_count']} CPUs; {versions}. torch.optim's default on CPU: "
            f"{m['torch_default_mode_cpu']}.\n\n"
            f"In-place bandwidth at the start: {bw['best_gb_s']:.1f} GB/s ({bw['method']}; all, GB/s: "
            f"{methods}). A rule's **limit** is the time that probe takes to move the rule's bytes "
            "(bytes/param x parameters, half read, half written), timed in the same rounds as the rule's "
            "implementations, or the fastest implementation's time where that is shorter. References in _italics_.",
            *filter(None, [load_warning(results)]),
            results_table(results),
            "## Rules\n\n" + rules_table(results),
            "## Import time\n\n" + imports_table(results),
            "## Goals\n\n" + goals_summary(results),
            goals_table(results),
        ]
    )


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """``benchmark.json`` and ``benchmark.md`` in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "benchmark.json", out_dir / "benchmark.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(markdown(results) + "\n")
    return json_path, md_path
