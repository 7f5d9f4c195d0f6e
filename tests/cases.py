"""The registry of rules and named configurations, as pytest parameters."""

from __future__ import annotations

import pytest

from optforge.rules import registry

RULES = registry()


def rule_configs():
    return [
        pytest.param(rule, name, cfg, id=f"{rule.name}-{name}")
        for rule in RULES.values()
        for name, cfg in rule.configs.items()
    ]
