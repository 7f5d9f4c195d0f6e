"""The benchmark on a tiny workload: the structure and sanity of its results, never its speed."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from optforge.benchmarks import report
from optforge.benchmarks.configs import config_for
from optforge.benchmarks.runners import REFERENCE, Unsupported, candidates
from optforge.benchmarks.suite import Options, run, select_rules
from optforge.benchmarks.workload import Size, make_workload

TINY = Size("tiny", n_params=3000, n_tensors=3, repeats=1, sweep_mib=1)


@pytest.fixture(scope="module")
def results():
    options = Options(size=TINY, rules=["SGD", "adamax"], warmup=1, bandwidth_bytes=1 << 20, import_repeats=1)
    return run(options, log=lambda line: None)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_every_implementation_is_measured_or_skipped_with_a_reason(results):
    rows = results["rows"]
    assert {r["rule"] for r in rows} == {"SGD", "Adamax"}
    names = {r["implementation"] for r in rows}
    assert {"numpy", "torch", "jax", "optax", "torch.optim foreach"} <= names
    for row in rows:
        if row["status"] == "skipped":
            assert row["note"]
            continue
        for key in ("median_ms", "min_ms", "max_ms", "cold_median_ms", "limit_ms", "ratio_to_limit"):
            assert _positive(row[key]), (row["implementation"], key, row[key])
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert _positive(row["ratio_to_best_reference"]) and row["best_reference"]


def test_limits_come_from_the_state_analysis(results):
    assert results["rules"]["SGD"]["bytes_per_param"] == 20  # w, g, velocity read; w, velocity written
    assert results["rules"]["Adamax"]["bytes_per_param"] == 28
    assert _positive(results["bandwidth"]["best_gb_s"])
    assert results["bandwidth"]["method"] in results["bandwidth"]["methods_gb_s"]


def test_the_limit_is_the_probe_in_the_same_rounds_or_the_fastest_implementation(results):
    """A rule's limit is its bytes moved by the bandwidth probe, timed among its implementations, or the
    fastest implementation where that is faster: no ratio is below 1."""
    for rule, facts in results["rules"].items():
        rows = [r for r in results["rows"] if r["rule"] == rule and r["status"] == "ok"]
        assert _positive(facts["probe_ms"])
        assert facts["limit_ms"] == min([facts["probe_ms"]] + [r["median_ms"] for r in rows])
        assert all(r["ratio_to_limit"] >= 1 for r in rows)
        assert facts["limit_from"] in {"the probe"} | {r["implementation"] for r in rows}


def test_generated_modules_import_neither_sympy_nor_jinja2(results):
    for backend, facts in results["imports"].items():
        assert _positive(facts["framework_ms"]) and facts["overhead_ms"] >= 0, backend
        assert facts["imports_sympy_or_jinja2"] == [], backend


def test_report_files(results, tmp_path):
    json_path, md_path = report.write(results, tmp_path)
    assert json.loads(json_path.read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    text = md_path.read_text()
    for heading in ("| rule | implementation | median ms", "## Rules", "## Import time", "## Goals"):
        assert heading in text
    goals = {g["goal"] for g in results["goals"]}
    assert goals == {goal.text for goal in report.GOALS}
    assert all(g["met"] in (True, False, None) for g in results["goals"])


def test_unknown_rule_is_a_clear_error():
    from optforge.rules import registry

    with pytest.raises(ValueError, match="unknown rule.*Adamw.*known: " + re.escape(next(iter(registry())))):
        select_rules(["Adamw"])


@pytest.mark.parametrize(
    "rule",
    [
        r
        for r in select_rules(None)
        if any(ref is not None and ref.equal for ref in (config_for(r).torch, config_for(r).optax))
    ],
)
def test_references_marked_equal_compute_our_update(rule):
    """What the benchmark calls an equal reference ends where our NumPy optimizer does (3 steps)."""
    workload = make_workload(3000, 3, seed=1)
    results = {}
    for candidate in candidates(rule, config_for(rule)):
        if candidate.name != "numpy" and (candidate.kind != REFERENCE or not candidate.reference.equal):
            continue
        try:
            runner = candidate.make(workload)
        except Unsupported:
            continue
        for _ in range(3):
            runner.step()
        results[candidate.name] = runner.values()
    ours = results.pop("numpy")
    assert results, "no reference ran"
    for name, values in results.items():
        for got, want in zip(values, ours):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{rule.name}: {name} vs ours")
