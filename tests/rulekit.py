"""Compile a throwaway rule and import its generated modules from a temporary folder."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from optforge.backends import backends
from optforge.compiler.pipeline import compile_rule


def load(rule, folder: pathlib.Path) -> dict:
    """{backend: module} for a rule that is not in the registry."""
    out = {}
    for name, backend in backends().items():
        path = folder / f"{name}_{rule.module}.py"
        path.write_text(backend.render(compile_rule(rule, form=backend.form, check_between_passes=True)))
        spec = importlib.util.spec_from_file_location(f"_throwaway_{name}_{rule.module}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[name] = module
        if name in ("fused", "triton"):  # where the optimizers' fused=True and fused="triton" look for it
            sys.modules[f"optforge.generated.{name}.{rule.module}"] = module
    return out
