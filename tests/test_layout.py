"""The repository root is the ``optforge`` package; nothing at the root may shadow a tool or the standard
library when a command runs there (``python -m build`` must run PyPA's build, not a module of ours)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys

import optforge

ROOT = pathlib.Path(optforge.__file__).resolve().parent
#: tools run from the repository root whose distributions may not be installed in the test environment
TOOLS = {"build", "pip", "setuptools", "wheel", "twine", "pytest", "ruff", "mypy", "tox", "nox", "site"}


def _root_modules() -> set[str]:
    files = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return files | folders


def test_no_root_module_shadows_the_standard_library_or_a_tool():
    installed = set(importlib.metadata.packages_distributions()) - {"optforge"}
    taken = set(sys.stdlib_module_names) | TOOLS | installed
    clashes = sorted(_root_modules() & taken)
    assert not clashes, f"modules at the repository root shadow other modules of the same name: {clashes}"


def test_the_documentation_code_lives_in_one_package():
    from optforge.documentation import latex, pages, plots, site  # noqa: F401

    stray = sorted(p.name for p in ROOT.glob("*.py") if p.stem in ("docs_pages", "plots", "site", "latex"))
    assert not stray, stray
