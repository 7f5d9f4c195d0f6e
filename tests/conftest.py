import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_enable_x64", True)


# -- the quick subset: `pytest -m quick` -------------------------------------------------------------
# Every test not tied to a rule, and each rule-parametrized test for the first rule of the registry only
# (the compiler, the runtime checks and each backend's machinery, once), leaving out the fused path (its
# kernels are compiled by Numba, seconds each), the commands run in a subprocess, and the files that
# install, lint, render the site in a browser, search with hypothesis or time the benchmark.
_SLOW_FILES = {
    "test_install.py",
    "test_lint.py",
    "test_docs.py",
    "test_properties.py",
    "test_benchmarks.py",
    "test_fused.py",
    "test_sharding.py",
}
_SLOW_WORDS = ("fused", "command")


def _first_rule() -> str:
    from optforge.rules import registry

    return next(iter(registry()))


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: a subset of the suite that runs in under two minutes")


def pytest_collection_modifyitems(config, items):
    import pytest

    first = _first_rule()
    for item in items:
        if item.path.name in _SLOW_FILES or any(word in item.name for word in _SLOW_WORDS):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        rule = params.get("rule", params.get("rule_name"))
        name = getattr(rule, "name", rule)
        if rule is None or name == first:
            item.add_marker(pytest.mark.quick)
