"""The tensors whose shape makes a rule's step element-wise, and the rule specialised to them.

A rule that reads a tensor's shape (torch's Muon: Newton-Schulz for a matrix, AdamW for every other tensor;
Adafactor: moments factored over two axes for a long enough tensor, a full moment otherwise) has no kernels
for its whole-tensor steps (a matrix product, a reduction over one axis): ``analysis.kernel_obstacle``. Its
other tensors take an element-wise step, which the kernels (Numba's, Triton's) compute. This module finds
them: the shape tests of the rule's equations (``Eq(rank, 2)``, ``rows > cols``, ``rank >= 2``; with the
flags and options that appear beside them, ``factored``, ``Given(min_dim_size_to_factor)``) are each taken
true or false; where an assignment leaves no whole-tensor node in any equation once the branches it rules
out and the values nothing reads any more are dropped, the tensors that pass its tests take the rule so
specialised. ``kernel_class`` returns the disjunction of those assignments (a test of the shape and of the
static hyperparameters, which ``ShapeTestPrinter`` prints as Python) and the specialised rule (with the
transform that wrapped the rule, Keras's options, applied again), or None.

A tensor the test does not pass takes the plain path, as one the kernels do not take for its dtype does.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import sympy as sp

from .analysis import KERNEL_OBSTACLES
from .dsl import (
    Accumulate,
    AxisBySize,
    AxisMean,
    AxisReduction,
    CoverMax,
    CoverMin,
    DtypeEpsilon,
    Given,
    MachineEpsilon,
    Rule,
    TensorMax,
    TensorRank,
    TensorSize,
    TensorSum,
)
from .ir import SPECIALISED
from .passes.tensor_states import SHAPE

#: at most this many tests are combined (2**n specialisations, each a pass over the equations)
MOST = 6


def kernel_class(rule: Rule) -> tuple[sp.Basic, Rule] | None:
    """(the test of the tensors whose step is element-wise, the rule specialised to them) or None: the rule
    has no whole-tensor step (every tensor is the kernels'), or no tensor's step is element-wise."""
    own = rule.inner if rule.inner is not None else rule
    if not _whole(own.equations):
        return None
    atoms = _atoms(own)
    if not atoms or len(atoms) > MOST:
        return None
    found: list[tuple[dict, Rule]] = []
    for values in itertools.product((False, True), repeat=len(atoms)):
        assumption = dict(zip(atoms, map(sp.sympify, values)))
        special = specialise(own, assumption)
        if special is not None:
            found.append((assumption, special))
    if not found:
        return None
    first = found[0][1]
    same = [a for a, s in found if _key(s) == _key(first)]
    # deep=False: the tests are atoms (SymPy's simplification of each relation costs seconds, for nothing)
    test = sp.simplify_logic(
        sp.Or(*[sp.And(*[x if v else sp.Not(x) for x, v in a.items()]) for a in same]), deep=False
    )
    wrap = getattr(rule, "wrap", None)
    return test, (wrap(first) if rule.inner is not None and wrap is not None else first)


def _whole(equations) -> bool:
    """Whether an equation reads a node the kernels cannot compute (``KERNEL_OBSTACLES``)."""
    return any(
        isinstance(node, KERNEL_OBSTACLES)
        for eq in equations
        for expr in (eq.expr, eq.when)
        for node in sp.preorder_traversal(sp.sympify(expr))
    )


#: a vector's (or a number's) cover by its slices is itself: SM3's ``cover_max`` and ``cover_min`` are the
#: identity below rank 2 (each slice along the one axis is one element)
SMALL = TensorRank(sp.Symbol("w")) <= 1

#: the ranks the shape tests are tried on (a rank above it passes the same tests as this one)
RANKS = range(9)


def _small(assumption: dict[sp.Basic, sp.Basic]) -> bool:
    """Whether the assumption leaves only tensors of rank 0 or 1 (``SMALL`` true, or ``rank >= 2`` false)."""
    rank = TensorRank(sp.Symbol("w"))
    tests = []  # (the test at each rank, its value): the tests that read the rank alone
    for atom, value in assumption.items():
        at = [sp.sympify(atom.xreplace({rank: r})) for r in RANKS]
        if all(x in (sp.true, sp.false) for x in at):
            tests.append((at, value))
    ranks = [r for r in RANKS if all(at[r] == value for at, value in tests)]
    return bool(tests) and bool(ranks) and max(ranks) <= 1


def _small_tensor(node: sp.Basic) -> sp.Basic:
    """What a cover or a reduction over one axis is for a tensor of rank 0 or 1: the value itself over an
    axis it lacks (the one before the last, the second longest; a cover: each slice is one element), a
    reduction over the whole tensor over the one it has (a mean of no element is 0, as over an empty
    axis)."""
    if isinstance(node, (CoverMax, CoverMin)):
        return node.args[0]
    axis, x = node.axis, node.args[0]
    if (axis.rank_by_size >= 2) if isinstance(axis, AxisBySize) else axis <= -2:
        return x
    if node.accumulate == Accumulate.MAX:
        return TensorMax(x)
    total = TensorSum(x)
    return total / sp.Max(TensorSize(sp.Symbol("w")), 1) if isinstance(node, AxisMean) else total


def _atoms(rule: Rule) -> list[sp.Basic]:
    """The shape tests of the rule's equations (a ``Ne`` as its ``Eq``), and the flags and options that
    appear in the same conditions, in a stable order; ``SMALL`` where the rule covers a tensor by its
    slices."""
    flags = {sp.Symbol(h.name) for h in rule.hypers.values() if h.kind == "bool"}
    found: dict[str, sp.Basic] = {}
    if any(
        isinstance(node, (CoverMax, CoverMin))
        for eq in rule.equations
        for node in sp.preorder_traversal(sp.sympify(eq.expr))
    ):
        found[sp.srepr(SMALL)] = SMALL
    for eq in rule.equations:
        for expr in (sp.sympify(eq.expr), sp.sympify(eq.when)):
            for node in sp.preorder_traversal(expr):
                if not isinstance(node, sp.logic.boolalg.Boolean) or not node.atoms(*SHAPE):
                    continue
                for atom in _relations(node):
                    found.setdefault(sp.srepr(atom), atom)
                for atom in node.free_symbols:
                    if isinstance(atom, Given) or atom in flags:
                        found.setdefault(sp.srepr(atom), atom)
    return [found[k] for k in sorted(found)]


def _relations(node: sp.Basic) -> list[sp.Basic]:
    """The relations in ``node`` that read the shape, a ``Ne`` as its ``Eq``."""
    out = []
    for x in sp.preorder_traversal(node):
        if isinstance(x, sp.core.relational.Relational) and x.atoms(*SHAPE):
            out.append(sp.Eq(*x.args) if isinstance(x, sp.Ne) else x)
    return out


def specialise(rule: Rule, assumption: dict[sp.Basic, sp.Basic]) -> Rule | None:
    """``rule`` where the tests of ``assumption`` have its values: branches ruled out dropped, values nothing
    reads and states nothing changes removed; None where a whole-tensor node remains."""
    replace = dict(assumption)
    replace.update({sp.Ne(*a.args): sp.Not(v) for a, v in assumption.items() if isinstance(a, sp.Eq)})
    constants: dict[sp.Symbol, sp.Basic] = {}  # lets that the assumption makes constants of the step
    lets = {eq.target for eq in rule.equations if eq.kind == "let"}
    step = (
        {sp.Symbol(h) for h in rule.hypers}
        | {Given(h) for h in rule.hypers}
        | {sp.Symbol("t"), sp.Symbol("n")}
    )
    equations = []
    small = _small(assumption)
    for eq in rule.equations:
        original = sp.sympify(eq.expr)
        expr = _substituted(original, replace, constants)
        if small:  # a cover below rank 2 is the tensor itself, a reduction over an axis it lacks too
            expr = expr.replace(lambda x: isinstance(x, (CoverMax, CoverMin, AxisReduction)), _small_tensor)
        # a kernel's tensors share one dtype: its machine epsilon is one value of the step
        expr = expr.replace(lambda x: isinstance(x, MachineEpsilon), lambda x: DtypeEpsilon())
        when = _substituted(sp.sympify(eq.when), replace, constants)
        target = sp.Symbol(eq.target)
        # a value the assumption made true or false, or one of the step where it was one per tensor
        # (Muon's weight decay, AdamW's for a tensor that is not a matrix): read as its value, so that the
        # kernels compute it from the hyperparameters (the plain path's step never computes it so)
        if eq.target in lets and (
            expr in (sp.true, sp.false) or (expr != original and expr.free_symbols <= step)
        ):
            constants[target] = expr
            continue
        constants.pop(target, None)
        if when is sp.false or expr == target:  # never in force, or a value (a state) kept as it is
            continue
        equations.append(type(eq)(eq.target, expr, eq.label, when, eq.origin, eq.kind))
    equations = _live(equations, rule)
    if _whole(equations):
        return None
    special = copy.copy(rule)
    special.__dict__ = dict(rule.__dict__)
    special.equations = equations
    written = {eq.target for eq in equations} | {x.name for eq in equations for x in eq.expr.free_symbols}
    special.states = {n: s for n, s in rule.states.items() if n in written}
    special.core = None
    special.let_latex = dict(rule.let_latex)
    special.transforms = [*rule.transforms, SPECIALISED]
    return special


def _substituted(expr: Any, replace: dict, constants: dict) -> Any:
    """``expr`` with the assumed tests and the constant lets replaced (SymPy drops a branch whose test is
    false, and those after a true one)."""
    if expr in (sp.true, sp.false):
        return expr
    return expr.xreplace(replace).xreplace(constants)


def _live(equations: list, rule: Rule) -> list:
    """The equations of the values the parameter's update and the states' updates need (and a finaliser
    reads), from ``w`` and the states back: a value nothing needs is dropped. A state's update is kept even
    where nothing else reads the state: the kernels store what the plain path stores."""
    deps: dict[str, set[str]] = {}
    for eq in equations:
        names = {x.name for x in sp.sympify(eq.expr).free_symbols | sp.sympify(eq.when).free_symbols}
        deps.setdefault(eq.target, set()).update(names)
    live = {"w"} | set(rule.states) | {x.name for e in rule.finalize for x in sp.sympify(e.expr).free_symbols}
    todo = list(live)
    while todo:
        for name in deps.get(todo.pop(), ()):
            if name not in live:
                live.add(name)
                todo.append(name)
    return [eq for eq in equations if eq.target in live]


def _key(rule: Rule) -> tuple:
    return tuple((eq.target, sp.srepr(eq.expr), sp.srepr(sp.sympify(eq.when))) for eq in rule.equations)
