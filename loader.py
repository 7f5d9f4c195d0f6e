"""``optforge.load(rule)``: a rule that is not in the registry, compiled and imported in one call.

The modules are those `optforge build` would write for the rule (``generated/<backend>/<module>.py``),
written to a folder (by default one per rule and text under the user's cache, so that Numba finds its
compiled kernels again in the next process) and imported under the names a registered rule's modules
have, ``optforge.generated.<backend>.<module>``: the NumPy and torch optimizers' ``fused=True`` and
``fused="triton"`` find their kernels there, as for a rule of the registry. Each module is imported when
first asked for, so that only the frameworks used need be installed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.abc
import importlib.util
import os
import pathlib
import sys
from types import ModuleType
from typing import Any

from optforge.compiler.dsl import Rule

BACKENDS = ("numpy", "jax", "torch", "fused", "triton")


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules of the rules loaded in this process: ``optforge.generated.<backend>.<module>``."""

    def __init__(self) -> None:
        self.paths: dict[str, pathlib.Path] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        file = self.paths.get(fullname)
        return None if file is None else importlib.util.spec_from_file_location(fullname, file)


_FINDER = _Finder()


class Loaded:
    """The modules of one loaded rule: ``.numpy``, ``.jax``, ``.torch``, ``.fused`` (Numba's kernels),
    ``.triton``, each imported at first use; ``.folder`` holds their files."""

    def __init__(self, rule: Rule, folder: pathlib.Path, refused: dict[str, str] | None = None) -> None:
        self.rule = rule
        self.folder = folder
        #: the kernel backends that print no module for the rule, and why (``analysis.kernel_obstacle``)
        self.refused = refused or {}

    def __getattr__(self, backend: str) -> ModuleType:
        if backend not in BACKENDS:
            raise AttributeError(f"no backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend in self.refused:
            raise ValueError(f"rule {self.rule.name} has no {backend} module: {self.refused[backend]}")
        return importlib.import_module(f"optforge.generated.{backend}.{self.rule.module}")

    def __getitem__(self, backend: str) -> ModuleType:
        return getattr(self, backend)

    def __repr__(self) -> str:
        return f"<optforge.load({self.rule.name}): {self.folder}>"


def _cache_folder() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "optforge" / "rules"


@functools.cache
def _registered_modules() -> dict[str, str]:
    """{module: rule name} of the registry, built once per process (a registry costs about 0.5 s)."""
    from optforge.rules import registry

    return {r.module: r.name for r in registry().values()}


def load(
    rule: Rule, folder: str | os.PathLike | None = None, *, check_between_passes: bool = False
) -> Loaded:
    """Compile ``rule`` for every backend and make its modules importable; returns them (``.numpy`` ...).

    ``folder``: where the modules are written (default: ``~/.cache/optforge/rules/<module>-<digest>``, one
    per rule and text). A broken rule raises ``RuleError`` here, naming the equation. A rule whose module
    name (``rule.module``) is a registered rule's is refused: its modules would hide the registered ones.
    Loading a rule again under the same module name replaces the modules this process imported.
    """
    from optforge.backends import backends
    from optforge.compiler.pipeline import compile_rule

    if not isinstance(rule, Rule):
        raise TypeError(f"optforge.load takes a Rule. Received: {rule!r} ({type(rule).__name__})")
    taken = _registered_modules()
    if rule.module in taken:
        raise ValueError(
            f"rule {rule.name}: module name {rule.module!r} is the registered rule {taken[rule.module]}'s;"
            " give the rule another name (or module=...) to load it beside the registry"
        )
    from optforge.compiler.analysis import kernel_obstacle

    programs = {}
    texts, refused = {}, {}
    for name, backend in backends().items():
        if backend.form not in programs:
            programs[backend.form] = compile_rule(
                rule, form=backend.form, check_between_passes=check_between_passes
            )
        if backend.takes(programs[backend.form]):
            texts[name] = backend.render(programs[backend.form])
        else:
            refused[name] = kernel_obstacle(programs[backend.form])
    if folder is None:
        digest = hashlib.sha256("".join(texts[n] for n in BACKENDS if n in texts).encode()).hexdigest()[:12]
        folder = _cache_folder() / f"{rule.module}-{digest}"
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    for name, text in texts.items():
        path = folder / f"{name}_{rule.module}.py"
        if not path.exists() or path.read_text() != text:  # unchanged files keep Numba's cache valid
            path.write_text(text)
        fullname = f"optforge.generated.{name}.{rule.module}"
        _FINDER.paths[fullname] = path
        sys.modules.pop(fullname, None)  # an earlier load's module of that name
    return Loaded(rule, folder, refused)
