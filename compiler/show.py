"""`optforge show RULE`: what a rule computes and what it stores."""

from __future__ import annotations

import sympy as sp

from .dsl import AxisBySize, AxisReduction, CoverMax, CoverMin, MachineEpsilon, Reduction, TensorRank
from .ir import Program, Role, Scope, base
from .passes.schedule import passes_over_all_tensors
from .passes.shape import COVER, token
from .render import docstring_equations, finalizer_text, math_text
from .traffic import communication


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  " + "  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * wd for wd in widths))
    return out


def state_cost(program: Program, itemsize: int = 4) -> tuple[int, int, int]:
    """(bytes per parameter element, scalars per tensor, scalars per optimizer) with every state allocated."""
    kept = [s for s in program.states if s.persists]  # a state only some tensors keep: per_tensor_costs
    per_element = sum(
        itemsize for s in kept if s.scope == Scope.ELEMENT and not s.reduced and s.kept is sp.true
    )
    per_tensor = sum(1 for s in kept if s.scope == Scope.TENSOR)
    per_step = sum(1 for s in kept if s.scope == Scope.GLOBAL)
    return per_element, per_tensor, per_step


def per_tensor_costs(program: Program, itemsize: int = 4, quote=str) -> str:
    """The bytes per parameter element of the states that only the tensors passing a test of their shape
    keep (``StateVar.kept``): `` (+4 for the tensors where rank != 2)`` (``quote`` wraps the test)."""
    return "".join(
        f" (+{itemsize} for the tensors where {quote(math_text(s.kept))})"
        for s in program.states
        if s.persists and s.scope == Scope.ELEMENT and not s.reduced and s.kept is not sp.true
    )


def exists_when(s, quote=str) -> str:
    """When a state exists: always, under a static condition (a flag, an option given), and for which
    tensors where only some keep it; ``quote`` wraps each condition (the docs' code spans)."""
    if not s.persists:
        return "never: the previous value is not read, recomputed each step"
    when = [] if s.allocated_when is sp.true else [quote(math_text(s.allocated_when))]
    if s.kept is not sp.true:
        when.append(f"for the tensors where {quote(math_text(s.kept))} (an empty array for the others)")
    return "; ".join(when) or "always"


def range_text(h) -> str:
    """A hyperparameter's valid values as the tables print them: its range, ``bool``, or its choices."""
    if h.kind == "choice":
        return " or ".join(map(repr, h.choices))
    return str(h.interval) if h.interval else "bool"


def reduced_cost(axes: tuple[int, ...]) -> str:
    """What a state with axes reduced keeps, for an m x n matrix (leading axes: one per matrix)."""
    named = {
        (-1,): "one per row: m of an m x n matrix",
        (-2,): "one per column: n of an m x n matrix",
        (COVER,): "one per index of each axis: m + n of an m x n matrix",
    }
    if any(isinstance(a, AxisBySize) for a in axes):
        named[tuple(axes)] = f"the tensor with its {' and '.join(token(a) for a in axes)} axis reduced"
    return "0 (" + named.get(tuple(axes), f"axes {', '.join(map(str, axes))} reduced to length 1") + ")"


def scope_word(s) -> str:
    """A state's scope in words: per element (per row, per column where an axis is reduced), per tensor..."""
    if any(isinstance(a, AxisBySize) for a in s.reduced):
        return f"per element, {' and '.join(token(a) for a in s.reduced)} axis reduced"
    return {(-1,): "per row", (-2,): "per column", (COVER,): "per slice"}.get(tuple(s.reduced), s.scope.word)


def reductions(program: Program) -> list[str]:
    """The reductions a program computes: over a tensor or all tensors (as the compiler names what they
    read), and over one axis (as the equations write them); the values read from a tensor's shape or
    dtype (its rank, its machine epsilon) are not reductions."""
    found = []

    def add(node: sp.Basic) -> None:
        text = math_text(node.xreplace({s: sp.Symbol(base(s)) for s in node.free_symbols}))
        if text not in found:
            found.append(text)

    for case in program.cases:
        for a in case.body:
            for node in sp.preorder_traversal(a.expr):
                if isinstance(node, Reduction) and not isinstance(node, (TensorRank, MachineEpsilon)):
                    add(node)
    for eq in program.equations:
        for node in sp.preorder_traversal(eq.expr):
            if isinstance(node, (AxisReduction, CoverMax, CoverMin)):
                add(node)
    return found


def passes_text(program: Program) -> str:
    """How many passes over all tensors each case makes before its update (as many as the longest chain of
    reductions over all tensors that read one another: Keras's ``global_clipnorm`` is one)."""
    counts = [passes_over_all_tensors(c.sections) for c in program.cases]
    if len(set(counts)) <= 1:
        return str(counts[0] if counts else 0)
    return ", ".join(f"{k} when {math_text(c.condition)}" for k, c in zip(counts, program.cases))


def show(program: Program) -> str:
    lines = [
        f"{program.rule}: {program.title}",
        f"  from {program.file}" + (f", a variant of {program.base}" if program.base else ""),
    ]
    if program.summary:
        lines += ["", "  " + program.summary]
    lines += ["", "equations (in order; g gradient, w parameter, t = 1, 2, ... the step):"]
    lines += ["  " + e for e in docstring_equations(program)]
    if program.finalize:
        lines += [
            "",
            "finaliser (finalize_variable_values, at the end of training; t is the last update's step):",
        ]
        lines += ["  " + e for e in finalizer_text(program)]
    lines += ["", "hyperparameters:"]
    rows = [["name", "default", "range", "meaning"]]
    for h in program.hypers:
        rows.append([h.name, repr(h.default), range_text(h), h.meaning])
    lines += _table(rows)
    lines += ["", "state:"]
    if program.states:
        rows = [["name", "scope", "initial value", "bytes per parameter (float32)", "exists when", "meaning"]]
        for s in program.states:
            cost = (
                reduced_cost(s.reduced)
                if s.reduced
                else "4"
                if s.scope == Scope.ELEMENT
                else ("one scalar per tensor" if s.scope == Scope.TENSOR else "one scalar")
            )
            when = exists_when(s)
            if not s.persists:
                cost = "0"
            rows.append([s.name, scope_word(s), math_text(s.init), cost, when, s.meaning])
        lines += _table(rows)
    else:
        lines.append("  (none)")
    off = program.replace(states=tuple(s for s in program.states if s.allocated_when is sp.true))
    per_element, per_tensor, per_step = state_cost(off)
    rows_and_columns = [s.name for s in off.states if s.persists and s.reduced]
    lines.append(
        f"  total with the options off: {per_element} bytes per float32 parameter{per_tensor_costs(off)},"
        f" {per_tensor} scalar(s) per tensor,"
        f" {per_step} per optimizer (plus the step count)"
        + (f", and the rows and columns of {', '.join(rows_and_columns)}" if rows_and_columns else "")
    )
    red = reductions(program)
    lines += ["", "reductions:"] + (["  " + r for r in red] or ["  (none)"])
    lines += ["", "passes over all tensors before the loop that updates them: " + passes_text(program)]
    lines += ["", "sharded parameters, per step (T tensors; element-wise work communicates nothing):"]
    for label, options in (
        ("no option", {}),
        ("clipnorm", {"clipnorm": 1.0}),
        ("global_clipnorm", {"global_clipnorm": 1.0}),
    ):
        c = communication(program, options)
        k, m = len(c["per_tensor"]), len(c["over_all"])
        size = " + ".join(x for x in (f"{k}*T" if k else "", str(m) if m else "") if x) or "0"
        gathered = (
            f"; torch all-gathers {', '.join(c['gathered'])} of each sharded tensor" if c["gathered"] else ""
        )
        lines.append(f"  {label}: {c['collectives']} all-reduce(s) of {size} scalars{gathered}")
    if len(program.cases) > 1:
        lines += ["", "cases (static conditions, compiled separately):"]
        for c in program.cases:
            lines.append(
                f"  when {math_text(c.condition)}: updates {', '.join(sorted({a.target for a in c.body if a.role in (Role.STATE, Role.PARAM)}))}"
            )
    lines += ["", "passes: " + " -> ".join(program.passes)]
    return "\n".join(lines)
