"""DSL.md, the reference of the rule DSL, stays true and complete.

Every ```python block of the page runs, each on its own (a fresh namespace, a temporary working folder), so
an example that stops working fails here; and every public name of ``compiler.dsl`` and every public method
of ``Rule`` is documented there, so a new construct without documentation fails too.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from optforge.compiler import dsl

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "DSL.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of the page."""
    text = PAGE.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    ]


BLOCKS = python_blocks()


def test_the_page_has_examples():
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"DSL.md:{line}" for line, _ in BLOCKS])
def test_example_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # optforge.load's default folder
    padded = "\n" * (line - 1) + code  # a failure's traceback names the line of DSL.md
    exec(compile(padded, str(PAGE), "exec"), {"__name__": f"dsl_md_{line}"})


def _documented(name: str, text: str) -> bool:
    return re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", text) is not None


def test_every_public_name_of_the_dsl_is_documented():
    text = PAGE.read_text()
    missing = [name for name in dsl.__all__ if not _documented(name, text)]
    assert not missing, f"DSL.md does not document {missing} (compiler.dsl.__all__)"


def test_every_public_method_of_rule_is_documented():
    text = PAGE.read_text()
    methods = [
        name for name, _ in inspect.getmembers(dsl.Rule, inspect.isfunction) if not name.startswith("_")
    ]
    assert "assign" in methods and "derive" in methods
    missing = [name for name in methods if not re.search(rf"`(?:RULE\.|rule\.)?{name}\(", text)]
    assert not missing, f"DSL.md does not document Rule.{missing}"


def test_every_example_is_a_complete_rule_or_command():
    """Each block imports what it uses (none relies on an earlier one): it starts with an import."""
    for line, code in BLOCKS:
        assert code.lstrip().startswith(("import ", "from ")), (
            f"DSL.md:{line} does not start with its imports"
        )


def test_readme_links_the_page():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing a rule") :]
    assert "(DSL.md)" in section[: section.index("\n## ", 3)]
