"""The README's usage snippets run as they stand (issue 18: the JAX one lacked `tx.init` and
`optax.apply_updates`), and the README's first command is still the main job's one line."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def usage_snippets() -> list[tuple[int, str]]:
    """(line, code) of each python block under "## Using a generated optimizer"."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Using a generated optimizer")
    end = text.index("\n## ", start + 1)
    found = []
    for match in re.finditer(r"```python\n(.+?)\n```", text[start:end], flags=re.S):
        line = text[: start + match.start(1)].count("\n") + 1
        found.append((line, match.group(1)))
    return found


def test_the_readme_shows_one_snippet_per_backend():
    imports = [re.findall(r"from optforge\.generated\.(\w+) import", code) for _, code in usage_snippets()]
    assert imports == [["torch"], ["jax"], ["numpy"]], (
        f"expected torch, JAX, NumPy snippets; received {imports}"
    )


@pytest.mark.parametrize("line, code", usage_snippets(), ids=["torch", "jax", "numpy"])
def test_readme_usage_snippet_runs_and_trains(line, code):
    namespace: dict = {}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    # each snippet fits y from x; its ten steps must have been taken (torch: the optimizer holds a state per
    # parameter) and moved the parameters (JAX, NumPy: they started at zero)
    if "model" in namespace:
        moved = len(namespace["opt"].state) == len(list(namespace["model"].parameters()))
    else:
        params = namespace["params"]
        values = params.values() if isinstance(params, dict) else params
        moved = any(float(abs(p).sum()) > 0 for p in values)
    assert moved, f"README.md:{line}: expected ten steps to change the parameters"


def test_the_first_command_sets_up_and_runs_the_main_job_in_one_line():
    first = re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[0]
    assert "\n" not in first and first.startswith("python3 -m venv .venv && ")
    assert first.endswith(".venv/bin/python -m optforge.demo"), first
