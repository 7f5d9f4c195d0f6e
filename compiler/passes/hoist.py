"""Invariants of the fused kernels: the values a kernel takes from outside its element loop.

A fused kernel (``backends/fused``) runs a case's per-element statements as scalar code in one loop.
Every sub-expression that reads no per-element value (a hyperparameter, the step, a per-tensor norm, a
literal number) is an *invariant*: computed once per step (and dtype) in Python, or once per tensor
inside the kernel, in the loop's dtype, and read by name. :class:`Invariants` gives each distinct
invariant one name, after what it holds where that reads in a few words (``c_lr``,
``c_one_minus_beta_1``, ``b_use_ema``; else a number: ``c_7``): ``c_`` a number, ``b_`` a bool.

A number is computed only where a use needs it (its *guard*, the static conditions under which the
expression that reads it is evaluated): elsewhere it is 0, so an option that is not given is never
read. Once-per-step values have one name whatever the guards of their uses (the guard is the
disjunction of theirs); a per-tensor value is computed at the point of the kernel's per-tensor code
where it is first read, under that use's guard, so each (value, guard) has its own.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Given
from ..ir import base
from ..ops import Call, Expr, Guarded, Kind, Leaf, Name, Value
from .typing import is_boolean


@dataclasses.dataclass
class Hoisted:
    name: str  # c_... (a number in the kernel's dtype) or b_... (a bool)
    expr: sp.Basic  # the value
    guard: sp.Basic = sp.true  # the static condition under which the value is used (else it is 0)
    per_tensor: bool = False  # whether it reads a per-tensor value (computed in the kernel)

    @property
    def boolean(self) -> bool:
        return self.name.startswith("b_")


class Invariants:
    """The invariants of one kernel, in the order they were first read."""

    def __init__(self, booleans: set[str], per_tensor: set[str], names: dict[str, str]) -> None:
        self.booleans = booleans  # names that hold a bool (flags, tests computed once per step)
        self.per_tensor = per_tensor  # names with a value per tensor (or per element)
        self.names = names  # what the generated code calls a rule's name (``lr``)
        self.items: list[Hoisted] = []
        self.keys: dict[tuple, str] = {}
        self.step: list[Hoisted] = []  # once per step (and dtype): they read no per-tensor value
        self.pending: list[Hoisted] = []  # per tensor, created since the last flush
        self.order: dict[str, int] = {}  # name -> when it was hoisted

    def hoist(self, expr: sp.Basic, guards: tuple) -> str:
        """The name of ``expr``, read where ``guards`` hold."""
        is_bool = is_boolean(expr, self.booleans)
        guard = sp.And(*guards) if guards and not is_bool and not expr.is_Number else sp.true
        reads = {getattr(s, "option", None) or base(s) for s in (expr.free_symbols | guard.free_symbols)}
        per_tensor = bool(reads & self.per_tensor)
        # once per step: one name whatever the guard, computed where any use needs it
        key = (sp.srepr(expr), sp.srepr(guard) if per_tensor else "")
        if key in self.keys:
            name = self.keys[key]
            item = next(h for h in self.items if h.name == name)
            if not per_tensor and item.guard is not sp.true:
                item.guard = sp.true if guard is sp.true else sp.simplify_logic(sp.Or(item.guard, guard))
            return name
        name = self.name_for(expr, "b" if is_bool else "c")
        item = Hoisted(name, expr, guard, per_tensor=per_tensor)
        self.items.append(item)
        (self.pending if item.per_tensor else self.step).append(item)
        self.keys[key] = name
        return name

    def name_for(self, expr: sp.Basic, kind: str) -> str:
        """``c_`` (a number) or ``b_`` (a bool) and what the value is, where that reads in a few words
        (``c_lr``, ``c_one_minus_beta_1``, ``b_use_ema``), else its number; unique in the kernel."""
        words = _words(expr, self.names)
        stem = (
            f"{kind}_{words}" if words else f"{kind}_{sum(h.name.startswith(kind + '_') for h in self.items)}"
        )
        name, k = stem, 2
        while any(h.name == name for h in self.items):
            name, k = f"{stem}_{k}", k + 1
        self.order[name] = len(self.order)
        return name

    def sort_key(self, name: str) -> tuple:
        """The kernels' arguments in order: the flags first, then the values, each as hoisted."""
        return (not name.startswith("b_"), self.order[name])

    def flush(self) -> list[Hoisted]:
        """The per-tensor values created since the last flush: they are computed at this point."""
        out, self.pending = self.pending, []
        return out


_NUMBERS = {0: "zero", 1: "one", 2: "two", sp.S.Half: "half", -1: "minus_one"}
#: the longest name a value gets from its words (a longer one is numbered: ``c_7``)
_LONGEST = 48
_COMPARISONS = {
    sp.Eq: "is",
    sp.Ne: "is_not",
    sp.Lt: "below",
    sp.Gt: "above",
    sp.Le: "at_most",
    sp.Ge: "at_least",
}


def _words(expr: sp.Basic, names: dict[str, str]) -> str:
    """A hoisted value in a few words for its name: ``lr``, ``one_minus_beta_1``, ``beta_1_pow_t``,
    ``neg_clipvalue``, ``max_clipnorm_sqrt_sumsq_g``, ``clipnorm_given_and_is_update``; '' where that would
    be longer than ``_LONGEST`` or does not read as a name (then the value is numbered). ``names``: what
    the generated code calls a rule's name (``lr``)."""
    words = _phrase(expr, names)
    return words if len(words) <= _LONGEST else ""


def _phrase(expr: sp.Basic, names: dict[str, str]) -> str:
    """``_words`` without the length limit ('' where a part has no words)."""

    def joined(parts: list[str], word: str) -> str:
        return word.join(parts) if all(parts) else ""

    if isinstance(expr, Given):
        return f"{expr.option}_given"
    if isinstance(expr, sp.Symbol):
        return names.get(base(expr), base(expr))
    if expr.is_Number:
        return _NUMBERS.get(expr, "")
    args = list(expr.args)
    if isinstance(expr, (sp.And, sp.Or)) and len(args) == 2:
        parts = [_phrase(a, names) for a in sorted(args, key=sp.default_sort_key)]
        return joined(parts, "_and_" if isinstance(expr, sp.And) else "_or_")
    if type(expr) in _COMPARISONS and len(args) == 2:
        return joined([_phrase(a, names) for a in args], f"_{_COMPARISONS[type(expr)]}_")
    if isinstance(expr, (sp.Max, sp.Min)) and len(args) == 2:
        head = "max" if isinstance(expr, sp.Max) else "min"
        return joined([head] + [_phrase(a, names) for a in args], "_")
    if isinstance(expr, sp.Add) and len(args) == 2:
        if sp.S.One in args:
            other = next(a for a in args if a != sp.S.One)
            if other.could_extract_minus_sign():
                inner = _phrase(-other, names)
                return f"one_minus_{inner}" if inner else ""
            inner = _phrase(other, names)
            return f"{inner}_plus_one" if inner else ""
        return joined([_phrase(a, names) for a in args], "_plus_")
    if isinstance(expr, sp.Mul) and len(args) == 2:
        if args[0] == -1:
            inner = _phrase(args[1], names)
            return f"neg_{inner}" if inner else ""
        return joined([_phrase(a, names) for a in args], "_times_")
    if isinstance(expr, sp.Pow):
        if expr.exp == sp.S.Half:
            inner = _phrase(expr.base, names)
            return f"sqrt_{inner}" if inner else ""
        if not expr.exp.is_Number:
            return joined([_phrase(expr.base, names), _phrase(expr.exp, names)], "_pow_")
    if isinstance(expr, sp.Mod) and len(args) == 2:
        return joined([_phrase(a, names) for a in args], "_mod_")
    return ""


def hoist_tree(tree: Expr, invariants: Invariants, guards: tuple = ()) -> tuple[Expr, set[str]]:
    """The kernel tree (``evaluation.kernel_tree``) with each leaf replaced by its invariant's name, and the
    names it reads. Leaves are named in the order the kernel's code reads them (an n-ary max from its last
    argument, as it is printed); a leaf under ``Guarded`` is computed where those guards hold."""
    used: set[str] = set()

    def walk(e: Expr, guards: tuple) -> Expr:
        if isinstance(e, Leaf):
            name = invariants.hoist(e.expr, guards)
            used.add(name)
            return Name(Value(name, Kind.BOOL if name.startswith("b_") else Kind.SCALAR))
        if isinstance(e, Guarded):
            return Guarded(walk(e.a, guards + e.guards), e.guards)
        if isinstance(e, Call) and e.fn in ("Max", "Min"):
            args = [walk(a, guards) for a in reversed(e.args)][::-1]
            return dataclasses.replace(e, args=tuple(args))
        changes = {}
        for f in dataclasses.fields(e):
            x = getattr(e, f.name)
            if isinstance(x, tuple) and all(_is_expr(v) for v in x):
                changes[f.name] = tuple(walk(v, guards) for v in x)
            elif _is_expr(x):
                changes[f.name] = walk(x, guards)
        return dataclasses.replace(e, **changes) if changes else e

    return walk(tree, guards), used


def _is_expr(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, (Value, type))
