"""Per-tensor states: a state that only the tensors passing a test of their shape use is kept for those
tensors alone.

torch's Muon keeps AdamW's second moment for the tensors that are not matrices (``exp_avg_sq <- ...
only_if=Ne(rank, 2)``, read only under ``where(Eq(rank, 2), muon, adamw)``): a matrix never reads or writes
it, so storing one for each matrix costs 4 bytes per parameter (float32) for nothing, and a sharded matrix
would gather it every step. This pass finds, for each per-element state, the tests of the tensor's shape
under which it is read or written (in every case; ``let``\\ s computed from the shape
alone, such as ``matrix = Eq(rank, 2)``, read as their definitions) and records their disjunction as the
state's ``kept``: the backends allocate the state for a tensor only where it holds (an empty array stands in
elsewhere, ``runtime.common.PerTensor``). Only tests of the tensor's shape count (``rank``, ``rows``,
``cols``, ``size``, the two longest axes' lengths), with the hyperparameters that are Python values where
the state is made (flags, integers, whether an option is given: optax's Adafactor factors a tensor whose
axes are ``min_dim_size_to_factor`` long); a path that also tests anything else (a real hyperparameter,
the step, the data) is widened to the tests it makes that count, which never drops a tensor that uses the
state. A state read or written without a shape test, read by a finaliser, or starting from the parameter,
is kept for every tensor (``kept`` stays true).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import Given, LargestLength, SecondLargestLength, TensorCols, TensorRank, TensorRows, TensorSize
from ..ir import Program, Role, Scope, base, ssa
from .state import finalizer_reads, paths_to
from .typing import python_hypers

#: what a per-tensor test may read: the tensor's shape (its dtype's epsilon is not a shape)
SHAPE = (TensorRank, TensorRows, TensorCols, TensorSize, LargestLength, SecondLargestLength)


def keep_per_tensor(program: Program) -> Program:
    finalized = finalizer_reads(program)
    static = static_hypers(program)
    states = []
    for s in program.states:
        # a state that starts from the parameter, or that a finaliser reads, is every tensor's
        starts_from_w = sp.Symbol("w") in s.init.free_symbols
        if s.persists and s.scope == Scope.ELEMENT and s.name not in finalized and not starts_from_w:
            s = dataclasses.replace(s, kept=kept_for(program, s.name, static))
        states.append(s)
    return program.replace(states=tuple(states), passes=program.passes + ("keep_per_tensor",))


def static_hypers(program: Program) -> set[sp.Symbol]:
    """The hyperparameters a test of which tensors keep a state may read besides their shape, as symbols
    (``typing.python_hypers``: flags, integers, whether an option is given)."""
    names = python_hypers(program)
    flags_and_ints = {sp.Symbol(n) for n in names if not n.endswith("?")}
    return flags_and_ints | {Given(h.name) for h in program.hypers if h.optional and f"{h.name}?" in names}


def kept_for(program: Program, name: str, static: frozenset | set = frozenset()) -> sp.Basic:
    """The test of a tensor's shape (and of ``static`` hyperparameters) under which some case reads or
    writes the state ``name`` (sp.true: every tensor's)."""
    paths = []
    for case in program.cases:
        definitions = _shape_lets(case.body, static)
        for a in case.body:
            for path in paths_to(a, name):  # a branch that keeps the state's value is no use
                paths.append(_widened(sp.to_nnf(_shape_only(path, definitions)), static))
                if paths[-1] is sp.true:
                    return sp.true
    kept = sp.simplify_logic(sp.Or(*paths)) if paths else sp.true
    # a test that does not read the shape is the same for every tensor of a group: the state's existence
    # (StateVar.allocated_when: Keras's gradient accumulator, kept when the option is given), not this
    return kept if kept.atoms(*SHAPE) else sp.true


def _shape_lets(body, static: frozenset | set = frozenset()) -> dict[sp.Symbol, sp.Basic]:
    """Each ``let`` of the case computed from the tensor's shape, ``static`` hyperparameters and numbers
    alone, as that expression."""
    out: dict[sp.Symbol, sp.Basic] = {}
    for a in body:
        if a.role != Role.LET:
            continue
        expr = _shape_only(a.expr, out)
        if expr.free_symbols <= {sp.Symbol("w")} | static and _in_shape(sp.Symbol("w"), expr):
            out[ssa(a.target, a.version)] = expr
    return out


def _shape_only(expr: sp.Basic, definitions: dict) -> sp.Basic:
    """``expr`` with the shape lets it reads replaced by their definitions and the parameter, whichever
    version of it, as ``w`` (its shape does not change)."""
    w = {x: sp.Symbol("w") for x in expr.free_symbols if base(x) == "w"}
    return expr.xreplace(w).xreplace(definitions)


def _in_shape(symbol: sp.Symbol, expr: sp.Basic) -> bool:
    """Whether every occurrence of ``symbol`` in ``expr`` is the argument of a shape function."""
    bare = expr.replace(lambda x: isinstance(x, SHAPE), lambda x: sp.Integer(0))
    return symbol not in bare.free_symbols


def _widened(path: sp.Basic, static: frozenset | set = frozenset()) -> sp.Basic:
    """A condition in negation normal form with every atom that is not a test of the shape (or of a
    ``static`` hyperparameter) made true: it holds wherever the path does."""
    if path in (sp.true, sp.false):
        return path
    if isinstance(path, (sp.And, sp.Or)):
        return type(path)(*(_widened(p, static) for p in path.args))
    atom = path.args[0] if isinstance(path, sp.Not) else path
    kept = (atom in static) or (
        isinstance(atom, sp.core.relational.Relational)
        and atom.free_symbols <= {sp.Symbol("w")} | static
        and _in_shape(sp.Symbol("w"), atom)
        and bool(atom.atoms(*SHAPE) or atom.free_symbols & static)
    )
    return path if kept else sp.true
