"""The main job (`python -m optforge.demo`), in reduced size: two of the rules that show every feature train the
digits network in NumPy, JAX and torch, the three agree, and the table and the picture are there (every
rule's own numbers are tested elsewhere in each backend; the main job runs every rule)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from cases import MACHINERY

from optforge.rules import registry

BACKENDS = ("numpy", "jax", "torch")


def test_demo_command_trains_and_the_backends_agree(tmp_path):
    """The command, on two of the rules that show every feature (``cases.MACHINERY``; without --rules: all)."""
    chosen = [rule.name for rule in MACHINERY[:2]]
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-m", "optforge.demo", "--epochs", "2", "--train", "256"]
        + ["--out", str(tmp_path / "curves.png"), "--json", str(tmp_path / "runs.json"), "--rules", *chosen],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, f"expected the demo to finish; it exited {out.returncode}:\n{out.stderr}"
    assert out.stderr == "", f"expected nothing on stderr; received:\n{out.stderr}"
    results = json.loads((tmp_path / "runs.json").read_text())
    runs = {(r["rule"], r["backend"]): r for r in results["runs"]}
    rules = {name: registry()[name] for name in chosen}
    assert set(runs) == {(name, b) for name in rules for b in BACKENDS}, "expected every rule x backend"

    for name in rules:
        numpy = runs[name, "numpy"]
        assert len(numpy["loss"]) == 3, f"{name}: expected the loss before training and after each epoch"
        # softmax cross-entropy of 10 classes at Glorot-initialised weights: near ln(10)
        assert abs(numpy["loss"][0] - math.log(10)) < 0.5, f"{name}: start loss {numpy['loss'][0]}"
        assert numpy["loss"][-1] < 0.95 * numpy["loss"][0], f"{name} did not train: {numpy['loss']}"
        for backend in ("jax", "torch"):
            other = runs[name, backend]
            for what in ("loss", "accuracy"):
                for step, (a, b) in enumerate(zip(numpy[what], other[what], strict=True)):
                    assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (
                        f"{name}: {backend}'s {what} after epoch {step} is {b!r}; NumPy's is {a!r} "
                        f"(expected equal to 1e-12 relative in float64)"
                    )

    lines = out.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == len(rules) * len(BACKENDS), "expected a progress line per run"
    for name in rules:
        rows = [line for line in lines if line.split()[:1] == [name] and "%" in line]
        assert len(rows) == 1, f"expected one table row for {name}; received {rows}"
        assert float(rows[0].split()[-1]) < 1e-12, f"{name}: the table's agreement column says {rows[0]}"
    widths = {len(line) for line in lines if line.split()[:1] and line.split()[0] in rules and "%" in line}
    assert len(widths) == 1, "expected the table's rows aligned (one width)"
    assert lines[-2] == f"Training curves: {tmp_path / 'curves.png'}"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _refused(argv: list[str], capsys) -> str:
    """The demo's ``main`` on ``argv`` (in this process: its argument checks come before any import of a
    framework): it exits 2; what it wrote on stderr."""
    from optforge import demo

    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    assert exit_.value.code == 2, f"expected exit status 2; received {exit_.value.code}"
    return capsys.readouterr().err


def test_demo_command_says_what_it_expected_of_a_bad_size(capsys):
    assert "`train` must be in [64, 1437]. Received: train=5" in _refused(["--train", "5"], capsys)


def test_demo_command_says_which_rules_it_knows(capsys):
    first = next(iter(registry()))
    err = _refused(["--rules", "Adamw"], capsys)
    assert f"unknown rule(s) Adamw; known: {first}, " in err, err
