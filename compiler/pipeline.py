"""The whole compiler, one pass after another.

The passes up to the state analysis are shared; then the pipeline forks by :class:`~.ir.Form`: the
in-place form (NumPy, torch, the kernels) protects aliases of buffers written in place, the increment form
(JAX) first derives ``update = w_new - w`` symbolically. Either way a case has one body.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from .analysis import kernel_obstacle
from .dsl import Rule
from .errors import RuleError
from .ir import Form, Program
from .passes.cse import eliminate_common_subexpressions
from .passes.guards import guard_lets
from .passes.increment import derive_increment
from .passes.integers import check_integer_operands
from .passes.lower import lower
from .passes.reductions import extract_reductions
from .passes.schedule import schedule
from .passes.scope import infer_scopes
from .passes.shape import infer_shapes
from .passes.shape_guards import guard_shape_values
from .passes.state import analyse_state
from .passes.storage import protect_aliases
from .passes.stored_dtype import hold_stored_states
from .passes.tensor_states import keep_per_tensor
from .passes.upcast import upcast_reductions
from .passes.verify import verify
from .shape_class import kernel_class

FRONT = (
    infer_scopes,  # how many values each quantity has: constant, global, per tensor, per element
    check_integer_operands,  # idiv and imod of integers only
    infer_shapes,  # which axes a per-element value has reduced (a row, a column of a matrix)
    analyse_state,  # what persists, under which conditions, what is dead
    keep_per_tensor,  # a state only some tensors use (by their shape) is kept for those alone
)

PASSES = {
    Form.IN_PLACE: (
        hold_stored_states,  # a state stored in a dtype of its own: its new value stored after it is read
        extract_reductions,  # each distinct reduction named and computed once
        upcast_reductions,  # the parameter read by a reduction in at least float32, as the gradient
        eliminate_common_subexpressions,
        protect_aliases,  # a value that names a buffer updated in place later is copied
        schedule,  # once-per-step sections and loops over the tensors
        guard_lets,  # a once-per-step value that only a branch reads, computed only when it is taken
        guard_shape_values,  # likewise a value only a test on the tensor's shape reads (Muon's matrices)
        verify,
    ),
    Form.INCREMENT: (
        derive_increment,  # update = w_new - w, symbolically, for optax-style backends
        extract_reductions,
        upcast_reductions,
        eliminate_common_subexpressions,
        schedule,
        guard_lets,
        guard_shape_values,
        verify,
    ),
}


def compile_rule(rule: Rule, *, form: Form = Form.IN_PLACE, check_between_passes: bool = False) -> Program:
    """Lower a rule and run every pass of ``form``; with ``check_between_passes`` the verifier runs after
    each."""
    return compile_forms(rule, (Form(form),), check_between_passes=check_between_passes)[Form(form)]


def compile_forms(
    rule: Rule,
    forms: tuple[Form, ...] = tuple(Form),
    *,
    check_between_passes: bool = False,
    kernels: bool = True,
) -> dict[Form, Program]:
    """The rule compiled in each of ``forms`` (``compile_rule``'s programs), the lowering and the shared
    passes (``FRONT``) run once for all: they are most of a compile (40 ms of a rule's 100)."""
    front = lower(rule)
    for run in FRONT:
        front = run(front)
        if check_between_passes:
            verify(front)
    inner = (
        compile_forms(rule.inner, forms, check_between_passes=check_between_passes, kernels=False)
        if rule.inner is not None  # the rule a transform wrapped, on its own (see Program.inner)
        else None
    )
    out = {}
    for form in map(Form, forms):
        program = front
        for run in PASSES[form]:
            program = run(program)
            if check_between_passes:
                verify(program)
        if inner is not None:
            # which tensors keep a rule's state is the rule's own: the options' guards (``is_update``) wrap
            # its shape tests, and their stages never touch its states
            kept = {s.name: s.kept for s in inner[form].states}
            states = tuple(dataclasses.replace(s, kept=kept.get(s.name, s.kept)) for s in program.states)
            program = program.replace(inner=inner[form], states=states)
        # the kernels print the whole program (a rule's own, inside Keras's options, is the plain paths')
        if kernels and form == Form.IN_PLACE and kernel_obstacle(program):
            program = program.replace(kernel_class=_kernel_class(rule, program, check_between_passes))
        out[form] = program
    return out


def _kernel_class(rule: Rule, program: Program, check: bool) -> tuple | None:
    """``Program.kernel_class`` of ``program`` (``rule`` compiled in place, a step that reads the shape):
    the test of the tensors whose step is element-wise and the rule specialised to them, compiled with
    its cases aligned to ``program``'s; None where there are no such tensors, or the specialised rule is
    not one (a state it reads that no step writes)."""
    found = kernel_class(rule)
    if found is None:
        return None
    test, special = found
    try:
        specialised = compile_forms(special, (Form.IN_PLACE,), check_between_passes=check)[Form.IN_PLACE]
    except RuleError:
        return None
    aligned = _aligned(specialised, program)
    return None if aligned is None else (test, aligned)


def _aligned(kernels: Program, program: Program) -> Program | None:
    """``kernels`` (the program specialised to the tensors whose step is element-wise) with one case per
    case of ``program``, in its order (the plain path calls the kernels of its own case): the specialised
    case whose condition the case implies (a flag that only the dropped whole-tensor steps read merges
    two cases into one). None where a case implies none."""
    cases = []
    for case in program.cases:
        found = [
            k
            for k in kernels.cases
            if sp.simplify_logic(sp.And(case.condition, sp.Not(k.condition)), deep=False) is sp.false
        ]
        if not found:
            return None
        cases.append(dataclasses.replace(found[0], condition=case.condition, test=case.test))
    return kernels.replace(cases=tuple(cases))
