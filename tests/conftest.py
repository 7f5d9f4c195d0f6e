import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# Triton reads TRITON_INTERPRET when it decorates a kernel, its own library's (tl.sum) included, at its
# first import: some test modules import it through torch or keras before test_triton.py is collected, so
# the interpreter is chosen here, before any of them (a GPU run sets OPTFORGE_TRITON_DEVICE=cuda).
if os.environ.get("OPTFORGE_TRITON_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

# XLA's CPU compiler, set for compiling fast: it emits the fused loops of a program with its older emitter
# (2.3 times faster to compile: an Adam update of 6 tensors 0.125 s against 0.28 s) as one LLVM module
# rather than split for threads that the two test workers leave no core for (another 15%). Compiling is
# most of what the JAX tests spend: with XLA's defaults about 250 of the suite's 1,000 CPU seconds, here
# 140 (test_jax_api.py alone: 71 s, 56 s, 45 s with -n 2). The programs (what optforge's JAX modules and
# optax give XLA) are the same; the machine code differs in the order of a reduction's sum: over every
# configuration of every rule (20 steps) the results differ from the default emitter's by at most 2.5e-16
# (float64) and 8.5e-7 (float32), relative. OPTFORGE_TEST_XLA_DEFAULT=1 keeps XLA's defaults.
if not os.environ.get("OPTFORGE_TEST_XLA_DEFAULT"):
    for _flag in ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1"):
        if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax

jax.config.update("jax_enable_x64", True)


# JAX's persistent compilation cache is left off: jaxlib 0.10.2 on CPU crashed the process reading an
# executable back from it (a segmentation fault in compilation_cache.get_executable_and_time, in the
# checkpoint tests), for a saving of about 20 CPU seconds in the whole suite.


@pytest.fixture
def fused_tensors(monkeypatch):
    """Counts the tensors the fused path updates."""
    from optforge.runtime import fused_support

    count = [0]
    run = fused_support.run

    def spy(case, work, scalars):
        count[0] += len(work)
        return run(case, work, scalars)

    monkeypatch.setattr(fused_support, "run", spy)
    return count


# -- the quick subset: `pytest -m quick` -------------------------------------------------------------
# Every test not tied to a rule, and each rule-parametrized test for the first rule of the registry only
# (the compiler, the runtime checks and each backend's machinery, once), leaving out the fused path (its
# kernels are compiled by Numba, seconds each), the commands and imports run in a subprocess, the NovoGrad
# family's own oracles (test_novograd.py: rules other than the first, 28 CPU seconds), and the files that
# install, lint, render the site in a browser, search with hypothesis or time the benchmark.
_SLOW_FILES = {
    "test_install.py",
    "test_lint.py",
    "test_docs.py",
    "test_properties.py",
    "test_benchmarks.py",
    "test_fused.py",
    "test_sharding.py",
    "test_novograd.py",
    "test_imports.py",
}
_SLOW_WORDS = ("fused", "command")


def _first_rule() -> str:
    from optforge.rules import registry

    return next(iter(registry()))


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: a subset of the suite that runs in under two minutes")


#: the files whose tests take tens of seconds each (subprocesses of two processes, a whole build, inductor):
#: run first, so that the suite does not end with one worker on such a test while the other has nothing
#: left (pytest-xdist's worksteal hands each worker a run of the collection order and steals from the end)
_LONG_FIRST = ("test_sharding.py", "test_generated_fresh.py", "test_matrix_ops.py", "test_demo.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in _LONG_FIRST)  # stable: the order otherwise kept
    first = _first_rule()
    for item in items:
        if item.path.name in _SLOW_FILES or any(word in item.name for word in _SLOW_WORDS):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        rule = params.get("rule", params.get("rule_name"))
        name = getattr(rule, "name", rule)
        if rule is None or name == first:
            item.add_marker(pytest.mark.quick)


# -- what the suite costs: OPTFORGE_TEST_COST=1 pytest ... --------------------------------------------
# Prints, at the end of the session, the CPU seconds (this process's threads and the subprocesses it waited
# for: os.times()) that the tests took, per test file and per rule of the registry (the tests parametrized
# with that rule: what one more rule adds to the suite), setup and teardown included (a module-scoped
# fixture counts in the test that first or last uses it). With pytest-xdist each worker measures its tests
# and the totals are summed over the workers, with each worker's CPU outside any test (imports, collection).
_COST = os.environ.get("OPTFORGE_TEST_COST", "") not in ("", "0")
_COST_KEY = "optforge_cpu_s"


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _rule_of(item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    rule = params.get("rule", params.get("rule_name"))
    return None if rule is None else str(getattr(rule, "name", rule))


if _COST:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        start = _cpu()
        yield
        item.user_properties.append((_COST_KEY, _cpu() - start))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        start = _cpu()
        yield
        item.user_properties.append((_COST_KEY, _cpu() - start))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item, nextitem):
        start = _cpu()
        yield
        item.user_properties.append((_COST_KEY, _cpu() - start))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        report.user_properties = [p for p in report.user_properties if p[0] == _COST_KEY][-1:]
        report.user_properties.append(("optforge_rule", _rule_of(item)))

    _costs: dict = {"tests": {}, "workers": []}

    def pytest_runtest_logreport(report):
        props = dict(report.user_properties)
        if _COST_KEY in props:
            entry = _costs["tests"].setdefault(report.nodeid, [props.get("optforge_rule"), 0.0])
            entry[1] += props[_COST_KEY]

    def pytest_sessionfinish(session):
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: its whole CPU, for the controller
            workeroutput["optforge_cpu_s"] = _cpu()

    def pytest_testnodedown(node, error):
        total = getattr(node, "workeroutput", {}).get("optforge_cpu_s")
        if total is not None:
            _costs["workers"].append(total)

    def pytest_terminal_summary(terminalreporter):
        tests = _costs["tests"]
        by_file: dict = {}
        by_rule: dict = {}
        for nodeid, (rule, seconds) in tests.items():
            f = by_file.setdefault(nodeid.split("::")[0], [0, 0.0])
            f[0] += 1
            f[1] += seconds
            r = by_rule.setdefault(rule or "(not tied to a rule)", [0, 0.0])
            r[0] += 1
            r[1] += seconds
        write = terminalreporter.write_line
        in_tests = sum(s for _, s in tests.values())
        terminalreporter.section("CPU seconds (OPTFORGE_TEST_COST)")
        for title, table in (("file", by_file), ("rule", by_rule)):
            write(f"{'per ' + title:<44} {'tests':>6} {'CPU s':>9}")
            for key, (n, seconds) in sorted(table.items(), key=lambda kv: -kv[1][1]):
                write(f"{key:<44} {n:>6} {seconds:>9.1f}")
            write("")
        workers = _costs["workers"] or [_cpu()]
        write(
            f"in tests: {in_tests:.1f} s; the processes in all: {sum(workers):.1f} s ({len(workers)} of them)"
        )
        if os.environ["OPTFORGE_TEST_COST"].endswith(".json"):  # every test's CPU seconds, to study
            import json

            with open(os.environ["OPTFORGE_TEST_COST"], "w") as f:
                json.dump(tests, f, indent=0)
