"""The whole compiler, one pass after another."""

from __future__ import annotations

from .dsl import Rule
from .ir import Program
from .passes.cse import eliminate_common_subexpressions
from .passes.increment import derive_increment
from .passes.lower import lower
from .passes.reductions import extract_reductions
from .passes.schedule import schedule
from .passes.scope import infer_scopes
from .passes.state import analyse_state
from .passes.storage import protect_aliases
from .passes.verify import verify

PASSES = (
    infer_scopes,  # how many values each quantity has: constant, global, per tensor, per element
    analyse_state,  # what persists, under which conditions, what is dead
    derive_increment,  # update = w_new - w, symbolically, for optax-style backends
    extract_reductions,  # each distinct reduction named and computed once
    eliminate_common_subexpressions,
    protect_aliases,  # a value that names a buffer updated in place later is copied (in-place form)
    schedule,  # once-per-step sections and loops over the tensors
    verify,
)


def compile_rule(rule: Rule, *, check_between_passes: bool = False) -> Program:
    """Lower a rule and run every pass; with ``check_between_passes`` the verifier runs after each."""
    program = lower(rule)
    for run in PASSES:
        program = run(program)
        if check_between_passes:
            verify(program)
    if rule.inner is not None:  # the rule a transform wrapped, on its own (see Program.inner)
        program = program.replace(inner=compile_rule(rule.inner, check_between_passes=check_between_passes))
    return program
