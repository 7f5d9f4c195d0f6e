"""Errors raised while compiling a rule.

Every error names the rule and, where there is one, the equation (its number,
its text and the file and line that wrote it), says what is wrong and how to
fix it.
"""

from __future__ import annotations


class RuleError(Exception):
    """A rule that cannot be compiled: the message names the rule and the equation."""

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        equation: str | None = None,
        origin: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.rule = rule
        self.equation = equation
        self.origin = origin
        self.hint = hint
        self.reason = message
        where = f"rule '{rule}'"
        if equation is not None:
            where += f", equation {equation}"
        if origin is not None:
            where += f" ({origin})"
        text = f"{where}: {message}"
        if hint:
            text += f"\n  how to fix: {hint}"
        super().__init__(text)


class BackendError(RuleError):
    """A construct that one backend's printer cannot print."""

    def __init__(self, rule: str, backend: str, node: str, *, equation: str | None = None) -> None:
        self.backend = backend
        self.node = node
        super().__init__(
            rule,
            f"the {backend} backend cannot print `{node}`",
            equation=equation,
            hint=f"use one of the functions the {backend} printer maps (see backends/{backend}/printer.py)"
            " or add it to that printer's table",
        )
