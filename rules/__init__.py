"""The registry of optimizer rules: every module in this package that defines ``RULE`` (or ``RULES``).

Adding an optimizer is adding a file here; nothing else changes. The registry
(rules and their named configurations) drives the build and every test. Every
rule gets Keras's shared options (``_keras_options.keras_options``).
"""

from __future__ import annotations

import importlib
import pkgutil

from optforge.compiler.dsl import Rule

from ._keras_options import keras_options


def registry() -> dict[str, Rule]:
    """Every rule, by name, in a stable order (module name)."""
    rules: dict[str, Rule] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for rule in getattr(module, "RULES", [getattr(module, "RULE", None)]):
            if rule is None:
                continue
            if rule.name in rules:
                raise ValueError(f"two rules are named {rule.name!r} ({info.name}.py and another)")
            rules[rule.name] = keras_options(rule)
    return dict(sorted(rules.items()))


def get(name: str) -> Rule:
    rules = registry()
    for rule in rules.values():
        if name in (rule.name, rule.module):
            return rule
    raise KeyError(f"no rule named {name!r}; known: {', '.join(rules)}")


def select(names: list[str] | None) -> list[Rule]:
    """The registry's rules named (by name or module, e.g. ``Nadam`` or ``novograd_tf1``), or all of them."""
    rules = registry()
    if names is None:
        return list(rules.values())
    by_name = {key: rule for rule in rules.values() for key in (rule.name, rule.module)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(rules)}")
    return [by_name[n] for n in names]
