"""The hand-written code passes ruff (generated/ is formatted by the build and checked by freshness)."""

from __future__ import annotations

import pathlib
import subprocess

from optforge.backends.base import ruff_command

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_and_format():
    check = subprocess.run(ruff_command() + ["check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        ruff_command() + ["format", "--check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
