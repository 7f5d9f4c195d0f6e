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
``cols``, ``size``): a path that also tests anything else (a flag, a hyperparameter, the data) is widened
to the shape tests it makes, which never drops a tensor that uses the state. A state read or written
without a shape test, or read by a finaliser, is kept for every tensor (``kept`` stays true).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from ..dsl import LargestLength, SecondLargestLength, TensorCols, TensorRank, TensorRows, TensorSize
from ..ir import Program, Role, Scope, base, ssa
from .state import finalizer_reads, reads

#: what a per-tensor test may read: the tensor's shape (its dtype's epsilon is not a shape)
SHAPE = (TensorRank, TensorRows, TensorCols, TensorSize, LargestLength, SecondLargestLength)


def keep_per_tensor(program: Program) -> Program:
    finalized = finalizer_reads(program)
    states = []
    for s in program.states:
        # a state that starts from the parameter, or that a finaliser reads, is every tensor's
        starts_from_w = sp.Symbol("w") in s.init.free_symbols
        if s.persists and s.scope == Scope.ELEMENT and s.name not in finalized and not starts_from_w:
            s = dataclasses.replace(s, kept=kept_for(program, s.name))
        states.append(s)
    return program.replace(states=tuple(states), passes=program.passes + ("keep_per_tensor",))


def kept_for(program: Program, name: str) -> sp.Basic:
    """The test of a tensor's shape under which some case reads or writes the state ``name`` (sp.true:
    every tensor's)."""
    paths = []
    for case in program.cases:
        definitions = _shape_lets(case.body)
        for a in case.body:
            for path in _uses(a, name):
                paths.append(_widened(sp.to_nnf(_shape_only(path, definitions))))
                if paths[-1] is sp.true:
                    return sp.true
    return sp.simplify_logic(sp.Or(*paths)) if paths else sp.true


def _uses(a, name: str) -> list:
    """The conditions under which the assignment ``a`` reads or writes the state ``name``. In the state's own
    assignment, a branch that keeps its value (``x <- where(c, e, x)``, also inside the options' guards) is
    not a use: the tensors that take it never touch the state."""
    return _writes(a.expr, name, sp.true) if a.target == name else reads(a.expr, name, sp.true)


def _writes(expr: sp.Basic, name: str, path: sp.Basic) -> list:
    if isinstance(expr, sp.Symbol) and base(expr) == name:
        return []  # kept as it was
    if not isinstance(expr, sp.Piecewise):
        return [path]  # a value computed here: written, and what it reads read, under the same path
    out, previous = [], sp.true
    for value, cond in expr.args:
        out += reads(cond, name, sp.And(path, previous))
        out += _writes(value, name, sp.And(path, previous, cond))
        previous = sp.And(previous, sp.Not(cond))
    return out


def _shape_lets(body) -> dict[sp.Symbol, sp.Basic]:
    """Each ``let`` of the case computed from the tensor's shape and numbers alone, as that expression."""
    out: dict[sp.Symbol, sp.Basic] = {}
    for a in body:
        if a.role != Role.LET:
            continue
        expr = _shape_only(a.expr, out)
        if expr.free_symbols <= {sp.Symbol("w")} and all(_in_shape(x, expr) for x in expr.free_symbols):
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


def _widened(path: sp.Basic) -> sp.Basic:
    """A condition in negation normal form with every atom that is not a test of the shape made true: it
    holds wherever the path does."""
    if path in (sp.true, sp.false):
        return path
    if isinstance(path, (sp.And, sp.Or)):
        return type(path)(*(_widened(p) for p in path.args))
    atom = path.args[0] if isinstance(path, sp.Not) else path
    shape_test = (
        isinstance(atom, sp.core.relational.Relational)
        and atom.free_symbols <= {sp.Symbol("w")}
        and all(_in_shape(x, atom) for x in atom.free_symbols)
        and atom.atoms(*SHAPE)
    )
    return path if shape_test else sp.true
