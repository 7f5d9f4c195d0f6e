"""Sharded parameters: JAX optimizers under ``jit`` with parameters laid out over two host devices by
``NamedSharding`` (sharded on dim 0, on dim 1, replicated) gives the unsharded run's parameters and state,
and keeps each per-element state laid out like its parameter.

The rules run in one subprocess (``tests/sharded_jax.py``: JAX reads ``XLA_FLAGS`` once, at import),
with no option, with ``clipnorm`` (a norm per tensor, over its shards) and with ``global_clipnorm`` (over
all tensors), 20 steps. The reductions add the shards' partial sums in another order than one device
does, so the runs agree to rounding, not bit for bit: float64 to 1e-12 relative, float32 to 1e-6.

JAX refuses a ``NamedSharding`` that does not divide a dimension evenly (``device_put`` of a (5, 3) array
sharded over 2 devices on dim 0: "should evenly divide the shape"), so uneven shards are not tested here.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from cases import MACHINERY, REDUCTIONS, RULES, compiled, features
from hyper_cases import kept

WORKER = pathlib.Path(__file__).with_name("sharded_jax.py")


@pytest.mark.parametrize("half", [0, 1], ids=["first_half", "second_half"])
def test_jax_optimizers_sharded_equal_the_unsharded_ones(half):
    """The rules that show every feature (``cases.MACHINERY``: each kind of state and reduction), in two
    subprocesses of half the rules each (JAX's import and XLA's compiles, about 40 CPU s in all: in one
    test, the suite's last minute could run on one core)."""
    names = [r.name for r in MACHINERY][half::2]
    out = subprocess.run([sys.executable, str(WORKER), *names], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    every = {"clipnorm/float64", "global_clipnorm/float64", "none/float32"}
    check_sharded(json.loads(out.stdout.strip().splitlines()[-1]), names, every, {"none/float64"})


def _reduces_over_shards(rule) -> bool:
    """Whether the rule's own reductions add the shards' partial sums: it reduces over a tensor or over all
    tensors, and does not gather each tensor whole first (``analysis.whole_tensor_reason``: then its
    reductions are of whole tensors, and its sharded runs are the gather's)."""
    from optforge.compiler.analysis import whole_tensor_reason

    return bool(features(rule) & REDUCTIONS) and not whole_tensor_reason(compiled(rule))


def check_sharded(results: dict, names: list[str], every: set[str], reducing: set[str], reduces=None) -> None:
    """The workers' results, by rule, per option set and dtype (``rel``: sharded vs unsharded; ``misplaced``:
    states not laid out like their parameter; ``collectives``: of each step): float64 within 1e-12, float32
    within 1e-6, a checkpoint's resumed run 0 (bit for bit), the collectives of a step as many as the
    compiler's ``communication`` says (one per pass over the tensors that reduces, not one per tensor). Every rule has the results ``every`` names; a rule that reduces itself
    ``reducing``'s too."""
    assert set(results) == set(names)
    problems = []
    for name, result in results.items():
        reduces_itself = (reduces or (lambda r: bool(features(r) & REDUCTIONS)))(RULES[name])
        want = every | (reducing if reduces_itself else set())
        assert set(result) == want, (name, sorted(result))
        for key, r in result.items():
            if "collectives" in r:  # one per pass over the tensors that reduces, as the compiler counts them
                from sharded_torch import LAYOUT, OPTION_SETS

                from optforge.compiler.traffic import communication

                option = OPTION_SETS[key.partition("/")[0]]
                c = communication(compiled(RULES[name]), option)
                # and a rule that needs each tensor whole: one all-gather of each array it names per
                # sharded tensor (a state only some tensors keep: for those)
                program = compiled(RULES[name])
                defaults = {n: h.default for n, h in RULES[name].hypers.items()}  # the workers' own
                want = c["collectives"] + sum(
                    1
                    for shape, dim in LAYOUT
                    if dim is not None
                    for n in c["gathered"]
                    if n not in c["kept"] or kept(program.state(n), shape, defaults)
                )
                if set(r["collectives"]) != {want}:
                    problems.append(f"{name} {key}: {r['collectives']} collectives per step, expected {want}")
            if r["misplaced"]:
                problems.append(f"{name} {key}: state not laid out like its parameter: {r['misplaced']}")
            tolerance = 0.0 if key.startswith("checkpoint") else 1e-12 if key.endswith("float64") else 1e-6
            if not r["rel"] <= tolerance:
                problems.append(f"{name} {key}: sharded vs unsharded, relative difference {r['rel']:.3g}")
    assert not problems, "\n".join(problems)


def test_the_sharding_page_example_runs_on_two_devices():
    """The JAX example of docs/sharding.md, as printed there, trains on two host devices and keeps the
    momentum laid out like its parameter."""
    text = (pathlib.Path(__file__).parents[1] / "docs" / "sharding.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loss_line, layout_line = out.stdout.strip().splitlines()[-2:]
    first, last = (
        float(word) for word in loss_line.replace(",", "").split() if word[0].isdigit() and "." in word
    )
    assert last < 0.5 * first, out.stdout
    param, state = (part.split(":")[1].strip() for part in layout_line.split("|"))
    assert param == state and "'d'" in param, layout_line


def _holds_by_default(when, rule) -> bool:
    """Whether an equation's ``when=`` holds with the rule's defaults (an option not given: ``Given`` false)."""
    import sympy as sp

    from optforge.compiler.dsl import Given

    when = sp.sympify(when)
    values = {x: sp.false for x in when.atoms(Given)}
    values.update({sp.Symbol(n): h.default for n, h in rule.hypers.items() if h.default is not None})
    return bool(when.xreplace(values))


@pytest.mark.parametrize("rule", RULES.values(), ids=list(RULES))
def test_communication_counts_the_reductions_the_rule_writes(rule):
    """With no option, a step all-reduces one scalar per tensor for each reduction over one tensor the
    rule's own equations write, and one per reduction over all tensors; global_clipnorm adds one scalar;
    clipnorm one per tensor, chained before the rule's own (the rule reads the clipped gradient)."""
    import sympy as sp

    from optforge.compiler.analysis import whole_tensor_reason
    from optforge.compiler.dsl import GlobalSum, TensorMax, TensorSum
    from optforge.compiler.traffic import communication

    program = compiled(rule)
    own = {
        node
        for eq in program.core or program.equations
        if _holds_by_default(eq.when, rule)  # an equation under a flag that is off does not run
        for node in sp.preorder_traversal(eq.expr)
        if isinstance(node, (TensorSum, TensorMax, GlobalSum))
    }
    per_tensor = len([r for r in own if not isinstance(r, GlobalSum)])
    over_all = len([r for r in own if isinstance(r, GlobalSum)])
    plain = communication(program)
    if whole_tensor_reason(program):  # gathered whole (the sharded run counts the all-gathers): its own
        per_tensor = over_all = 0  # reductions need no collective
        assert plain["gathered"][:2] == ["w", "g"]
        assert set(plain["gathered"][2:]) <= {s.name for s in program.states}
    else:
        assert plain["gathered"] == []
    assert (len(plain["per_tensor"]), len(plain["over_all"])) == (per_tensor, over_all)
    assert plain["scalars"](10) == 10 * per_tensor + over_all
    clipped = communication(program, {"clipnorm": 1.0})
    assert clipped["scalars"](10) == 10 * (per_tensor + 1) + over_all
    assert clipped["collectives"] == 1 + (per_tensor + over_all > 0)
    glob = communication(program, {"global_clipnorm": 1.0})
    assert glob["scalars"](10) == 10 * per_tensor + over_all + 1


TORCH_WORKER = pathlib.Path(__file__).with_name("sharded_torch.py")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("half", [0, 1], ids=["first_half", "second_half"])
def test_torch_optimizers_on_dtensors_equal_the_unsharded_ones(half, tmp_path):
    """The machinery rules' torch optimizers over DTensor parameters (two processes, gloo on 127.0.0.1;
    sharded on dim 0 and on dim 1 with shards of unequal sizes, and replicated), with no option, clipnorm
    (a norm per tensor) and global_clipnorm (the shards' partial sums all-reduced once for all tensors):
    20 steps equal the unsharded run, float64 to 1e-12 and float32 to 1e-6 (``sharded_torch.py`` says
    which), parameters and state; each
    element-wise state laid out like its parameter, each per-tensor one replicated. The rules that reduce
    themselves also train an MLP under FSDP2's ``fully_shard`` (``sharded_torch.run_fully_shard``), and resume
    one from a ``torch.distributed.checkpoint`` bit for bit (``sharded_torch.run_checkpoint``), and the same
    checkpoint in one process, unsharded, to 1e-12 (``sharded_torch.resume_unsharded``). A rule that needs
    each tensor whole (an axis reduction, a matrix product) gathers it: its reduced states are replicated,
    and each step all-gathers what ``traffic.communication`` says. Half the rules in each of two tests."""
    pytest.importorskip("torch")
    rules = MACHINERY[half::2]
    names = [r.name for r in rules]
    entries = [r.name + (":reduces" if _reduces_over_shards(r) else "") for r in rules]
    out = subprocess.run(
        [sys.executable, str(TORCH_WORKER), str(_free_port()), str(tmp_path), *entries],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    every = {"global_clipnorm/float64", "none/float32"}
    reducing = {
        "clipnorm/float64",
        "none/float64",
        "fully_shard/float64",
        "checkpoint/float64",
        "resume_unsharded/float64",
    }
    check_sharded(
        json.loads(out.stdout.strip().splitlines()[-1]), names, every, reducing, _reduces_over_shards
    )
