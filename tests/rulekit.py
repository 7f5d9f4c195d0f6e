"""Compile a throwaway rule and import its generated modules from a temporary folder (``optforge.load``)."""

from __future__ import annotations

import pathlib

import optforge


def load(rule, folder: pathlib.Path) -> dict:
    """{backend: module} for a rule that is not in the registry (the verifier between the passes)."""
    loaded = optforge.load(rule, folder, check_between_passes=True)
    return {name: loaded[name] for name in ("numpy", "jax", "torch", "fused", "triton")}
