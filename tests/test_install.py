"""`pip install .` puts everything under one import name, optforge, and the generated modules work from it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pip_install_layout_and_use(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    top = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert top == ["optforge"], f"site-packages got {top}; everything must live under optforge/"
    pkg = target / "optforge"
    for sub in ("rules", "compiler", "backends", "generated", "runtime"):
        assert (pkg / sub / "__init__.py").exists(), f"optforge.{sub} missing from the installed package"
    assert (pkg / "backends" / "numpy" / "module.py.j2").exists(), "templates are not installed"
    assert not (pkg / "tests").exists()
    code = (
        "import numpy as np, optforge\n"
        f"assert optforge.__file__.startswith({str(target)!r}), optforge.__file__\n"
        "from optforge.generated.numpy import Adamax\n"
        "opt = Adamax(learning_rate=0.1); p = [np.ones(3)]; s = opt.init(p)\n"
        "p, s = opt.step(p, [np.ones(3)], s); assert np.all(p[0] < 1)\n"
        # the installed package compiles a rule as the checkout does (its templates there): one rule, seconds
        "from optforge.builder import diff, generate, package_root\n"
        "assert diff(package_root(), generate(['Adamax']), everything=False) == ''\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
