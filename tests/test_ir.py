"""The IR's types, and single passes run on IR built by hand."""

from __future__ import annotations

import pytest
import sympy as sp

from optforge.compiler.dsl import Reduction, g, global_max, global_norm, tensor_max, tensor_sum
from optforge.compiler.ir import Assign, Role, Scope, Section, SectionKind, ssa
from optforge.compiler.passes.reductions import extract_reductions
from optforge.compiler.passes.scope import scope_of


def test_roles_and_section_kinds_are_typed():
    a = Assign("m", 1, g, "state")
    assert a.role is Role.STATE
    with pytest.raises(ValueError):
        Assign("m", 1, g, "stat")  # a typo is an error where it is made, not a statement no pass recognises
    assert Section("reduce", (a,)).kind is SectionKind.REDUCE
    with pytest.raises(ValueError):
        Section("loop", (a,))


def test_reductions_say_what_they_reduce_over_and_how():
    cases = {
        tensor_sum(g**2): ("tensor", "sum", Scope.TENSOR),
        tensor_max(abs(g)): ("tensor", "max", Scope.TENSOR),
        global_norm(g).args[0]: ("global", "sum", Scope.GLOBAL),
        global_max(g): ("global", "max", Scope.GLOBAL),
    }
    for node, (over, accumulate, scope) in cases.items():
        assert isinstance(node, Reduction)
        assert (node.over, node.accumulate) == (over, accumulate)
        assert scope_of(node, {"g": Scope.ELEMENT}) == scope


def test_extract_reductions_alone_names_each_reduction_once():
    from optforge.compiler.ir import Case, Program

    w = sp.Symbol("w")
    body = (
        Assign("v", 1, sp.Symbol("v") + tensor_sum(g**2), Role.STATE, Scope.TENSOR),
        Assign("w", 1, w - g / sp.sqrt(tensor_sum(g**2)), Role.PARAM),
    )
    program = Program("Hand", "hand", "", "", (), "", None, (), (), (), (Case(sp.true, body),), {})
    (case,) = extract_reductions(program).cases
    reduce = [a for a in case.body if a.role is Role.REDUCE]
    assert [a.target for a in reduce] == ["sumsq_g"]
    assert case.body[1].expr == sp.Symbol("v") + sp.Symbol("sumsq_g")
    assert case.body[2].expr == w - g / sp.sqrt(sp.Symbol("sumsq_g"))
    assert ssa("sumsq_g", 0) == sp.Symbol("sumsq_g")


def test_tensor_reduction_pass_alone_replays_what_the_reductions_read_and_writes_nothing():
    """LAMB's shape: the norm of an update computed from new state. The pass replays the state's new
    value and the update (role ``replay``: local values) and computes the norms; with a reduction that
    reads another, no single pass computes them (None)."""
    from optforge.compiler.passes.schedule import tensor_reduction_pass

    m, w = sp.Symbol("m"), sp.Symbol("w")
    u, norm_u, norm_w = sp.Symbol("u"), sp.Symbol("norm_u"), sp.Symbol("norm_w")
    body = (
        Assign("m", 1, m / 2 + g, Role.STATE),
        Assign("u", 0, ssa("m", 1) * 3, Role.LET),
        Assign("norm_u", 0, tensor_sum(u**2), Role.REDUCE, Scope.TENSOR),
        Assign("norm_w", 0, tensor_sum(w**2), Role.REDUCE, Scope.TENSOR),
        Assign("w", 1, w - u * norm_w / norm_u, Role.PARAM),
    )
    prepass = tensor_reduction_pass(Section(SectionKind.TENSOR, body))
    assert prepass.kind is SectionKind.REDUCE
    assert [(a.target, a.role) for a in prepass.body] == [
        ("m", Role.REPLAY),
        ("u", Role.REPLAY),
        ("norm_u", Role.REDUCE),
        ("norm_w", Role.REDUCE),
    ]
    chained = body[:3] + (Assign("r", 0, tensor_sum(g * norm_u), Role.REDUCE, Scope.TENSOR),) + body[4:]
    assert tensor_reduction_pass(Section(SectionKind.TENSOR, chained)) is None
    assert tensor_reduction_pass(Section(SectionKind.TENSOR, body[:2] + body[4:])) is None  # none to pass
