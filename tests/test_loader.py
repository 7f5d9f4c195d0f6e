"""``optforge.load(rule)``: a rule outside the registry compiled and imported in one call (DSL.md's first
example runs it; tests/rulekit.py loads every throwaway rule of the suite with it)."""

from __future__ import annotations

import numpy as np
import pytest

import optforge
from optforge.compiler.dsl import Rule, g, w


def _sgd(name: str, lr: float) -> Rule:
    rule = Rule(name, title="gradient descent")
    rate = rule.learning_rate(lr)
    rule.assign(w, w - rate * g, "parameter update")
    return rule


def _step(loaded, name: str) -> np.ndarray:
    opt = getattr(loaded.numpy, name)()
    params = [np.array([1.0, 2.0])]
    params, _ = opt.step(params, [np.array([1.0, -1.0])], opt.init(params))
    return params[0]


def test_the_default_folder_is_under_the_users_cache_and_a_new_text_replaces_the_modules(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = optforge.load(_sgd("LoaderSGD", 0.5))
    assert first.folder.parent == tmp_path / "optforge" / "rules"
    assert sorted(p.name for p in first.folder.iterdir()) == sorted(
        f"{b}_loader_sgd.py" for b in ("numpy", "jax", "torch", "fused", "triton")
    )
    assert np.array_equal(_step(first, "LoaderSGD"), [0.5, 2.5])
    again = optforge.load(_sgd("LoaderSGD", 0.25))  # the same name, another text: another folder
    assert again.folder != first.folder
    assert np.array_equal(_step(again, "LoaderSGD"), [0.75, 2.25]), "the first load's module was kept"


def test_a_registered_rules_module_name_and_a_non_rule_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"module name 'adamax' is the registered rule Adamax's"):
        optforge.load(_sgd("Adamax", 0.1), tmp_path)
    with pytest.raises(TypeError, match=r"optforge.load takes a Rule. Received: 'Adamax' \(str\)"):
        optforge.load("Adamax", tmp_path)
    loaded = optforge.load(_sgd("LoaderOther", 0.1), tmp_path)
    with pytest.raises(AttributeError, match="no backend 'cuda': expected one of numpy, jax, torch"):
        loaded.cuda  # noqa: B018
