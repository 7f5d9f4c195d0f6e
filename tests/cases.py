"""The registry of rules and named configurations, as pytest parameters."""

from __future__ import annotations

import functools
import os

import pytest

from optforge.rules import registry

RULES = registry()


@functools.cache
def first_step_moves(rule) -> bool:
    """Whether the rule's first step can change the parameters: its own equations (Keras's options apart)
    evaluated at ``t = 1`` with every state at its initial value and every hyperparameter at its default
    (the gradient a symbol) leave ``w`` as it was only where the step applies the *previous* step's update
    (optax's rprop: its first update is 0). The liveness checks of the machinery tests ("every parameter
    moved") hold for a rule whose first step moves; for the others, some parameter moves after the first
    step, and none at it."""
    import sympy as sp
    from sympy.core.symbol import Str

    own = rule.inner or rule
    values = {sp.Symbol(n): s.init for n, s in own.states.items()}
    values.update(
        {
            sp.Symbol(n): Str(h.default) if h.kind == "choice" else h.default  # a choice's value: a string
            for n, h in own.hypers.items()
            if h.default is not None
        }
    )
    values[sp.Symbol("t")] = sp.Integer(1)
    for eq in own.equations:
        if sp.sympify(eq.when).xreplace(values) is sp.false:
            continue
        values[sp.Symbol(eq.target)] = sp.sympify(eq.expr).xreplace(values)
    return values[sp.Symbol("w")] != sp.Symbol("w")


def rule_configs():
    return [
        pytest.param(rule, name, cfg, id=f"{rule.name}-{name}")
        for rule in RULES.values()
        for name, cfg in rule.configs.items()
    ]


# -- the rules the machinery tests run on ------------------------------------------------------------
# Tests of what every rule shares (checkpoints, the framework APIs, storage and precision policies, the
# options' stages) run on the fewest rules of the registry that, together, show every structural feature
# the compiler sees in a rule: each kind of state (per element, per tensor, global; starting at zero, at
# a hyperparameter or at the parameter), each reduction, conditional cases, flags, integer and required hyperparameters, a rule that reads
# the parameter. A new rule with a new feature joins them by itself. The rule's own numbers (its oracles,
# the backends' agreement, the literal transcription, the fused and Triton kernels) are tested on every
# rule. OPTFORGE_TEST_ALL_RULES=1 runs the machinery tests on every rule too.


#: the tests' programs are compiled with the verifier after every pass
CHECK_BETWEEN_PASSES = True


def compiled(rule, form: str = "in-place"):
    """``compile_rule(rule, form=form)``, once per test process (collection reads it for several files), with
    the verifier between its passes (test_compiler.py asserts it of every rule; a small cost)."""
    from optforge.compiler.ir import Form

    return _both_forms(rule)[Form(form)]


@functools.cache
def _both_forms(rule) -> dict:
    """The rule in both forms, lowered once (``compile_forms``): collection asks each rule in both."""
    from optforge.compiler.pipeline import compile_forms

    return compile_forms(rule, check_between_passes=CHECK_BETWEEN_PASSES)


@functools.cache
def features(rule) -> frozenset[str]:
    """The structural features of a rule, as its compiled program shows them."""
    import sympy as sp

    from optforge.compiler.dsl import CoverMax, CoverMin, MatrixOp, Reduction

    program = compiled(rule)
    own = program.inner or program
    out = set()
    w = sp.Symbol("w")
    for s in own.states:
        if s.persists:
            out.add(f"state {s.scope.word}")
            if s.reduced:
                out.add("state with an axis reduced")
            init = sp.sympify(s.init).free_symbols
            if w in init:
                out.add("state from w")
            elif init:
                out.add("state from a hyperparameter")
    for eq in own.core or own.equations:
        expr = sp.sympify(eq.expr)
        for node in sp.preorder_traversal(expr):
            if isinstance(node, Reduction):
                out.add(type(node).__name__)
            elif isinstance(node, MatrixOp):
                out.add("matrix operations")
            elif isinstance(node, (CoverMax, CoverMin)):
                out.add("a cover by slices")
            elif isinstance(node, sp.Piecewise):
                out.add("where")
        if eq.target != "w" and w in expr.free_symbols:
            out.add("reads w")
    if len(own.cases) > 1:
        out.add("cases")
    for h in own.hypers:
        if h.kind in ("bool", "int"):
            out.add(f"{h.kind} hyperparameter")
        if h.default is None:  # the learning rate without a default (optax's), or an option of the rule's
            out.add("required hyperparameter" if h.kind == "learning_rate" else "option of its own")
    return frozenset(out)


def kernels(rule) -> bool:
    """Whether the kernel backends (Numba's, Triton's) print the rule: for every tensor
    (``analysis.kernel_obstacle``), or for those whose step is element-wise (``Program.kernel_class``)."""
    from optforge.compiler.analysis import kernel_obstacle

    program = compiled(rule)
    return not kernel_obstacle(program) or program.kernel_class is not None


def kernel_takes(rule, shape: tuple, hypers: dict) -> bool:
    """Whether the rule's kernels take a tensor of ``shape`` (every tensor, or those the test of the
    tensors whose step is element-wise passes), given the hyperparameters (the rule's defaults under
    ``hypers``), evaluated here from the compiler's test, not from the generated module."""
    import sympy as sp

    from optforge.compiler.dsl import Given

    program = compiled(rule)
    if program.kernel_class is None:
        return True
    test = program.kernel_class[0]
    values = {**{n: h.default for n, h in rule.hypers.items()}, **hypers}
    shape_values = {
        "TensorRank": len(shape),
        "TensorRows": shape[-2] if len(shape) >= 2 else 1,
        "TensorCols": shape[-1] if shape else 1,
        "LargestLength": sorted(shape)[-1] if shape else 1,
        "SecondLargestLength": sorted(shape)[-2] if len(shape) >= 2 else 1,
    }
    replace = {x: sp.Integer(shape_values[type(x).__name__]) for x in test.atoms(sp.Function)}
    for x in test.free_symbols:
        if isinstance(x, Given):
            replace[x] = sp.true if values.get(x.option) is not None else sp.false
        elif x.name in values and values[x.name] is not None:
            replace[x] = sp.sympify(values[x.name])
    return bool(test.xreplace(replace))


def kernel_rule_configs():
    """``rule_configs()`` of the rules that have kernels."""
    return [p for p in rule_configs() if kernels(p.values[0])]


#: the features that are reductions (a norm per tensor, a sum over all tensors)
REDUCTIONS = frozenset({"TensorSum", "TensorMax", "GlobalSum", "GlobalMax"})


def _cover() -> list:
    """The machinery rules. They step with gradients alone: a rule whose step also reads the objective's
    value (``loss``, Polyak's) is not one of them; tests/test_loss.py runs its machinery (checkpoints, jit,
    chains, closures, the options) with the value given."""
    if os.environ.get("OPTFORGE_TEST_ALL_RULES", "") not in ("", "0"):
        return [r for r in RULES.values() if not r.reads_loss]
    seen: set = set()
    chosen = []
    rules = {rule: features(rule) for rule in RULES.values() if not rule.reads_loss}
    while True:  # greedy: the rule that adds the most features not yet seen, the registry's first on a tie
        best = max(rules, key=lambda r: len(rules[r] - seen))
        if chosen and not rules[best] - seen:
            return [r for r in RULES.values() if r in chosen]
        chosen.append(best)
        seen |= rules[best]


@functools.cache
def _machinery() -> dict:
    chosen = _cover()
    return {"MACHINERY": chosen, "KERNEL_MACHINERY": [r for r in chosen if kernels(r)]}


def __getattr__(name: str):
    """``MACHINERY`` (the rules the machinery tests run on, see above) and ``KERNEL_MACHINERY`` (those of
    them that have kernels), computed when first read: choosing them compiles every rule, which a
    subprocess that asks for one rule's ``features`` (tests/sharded_jax.py) should not pay."""
    if name in ("MACHINERY", "KERNEL_MACHINERY"):
        return _machinery()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def skip_without_kernels(rule, fused) -> None:
    """Skip a run of ``fused`` (True, "triton") on a rule that has no kernels, saying why."""
    from optforge.compiler.analysis import kernel_obstacle

    if fused and not kernels(rule):
        pytest.skip(f"{rule.name} has no kernels: {kernel_obstacle(compiled(rule))}")
