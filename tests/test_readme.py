"""The README's first two commands are the ones CI runs."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_main_job_and_test_commands():
    main, tests = readme_commands()[:2]
    assert "optforge build" in main and "optforge.demo" in main
    assert "pytest" in tests and "-c constraints.txt" in tests


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()
