"""The page on sharded parameters: how to train with each backend, and what each rule communicates per step
(computed from the reductions by ``compiler/traffic.py``)."""

from __future__ import annotations

from optforge.compiler.analysis import whole_tensor_reason
from optforge.compiler.ir import Program
from optforge.compiler.render import math_text
from optforge.compiler.traffic import communication

#: the option sets whose reductions differ: none, a norm per tensor, a norm over all tensors
OPTION_SETS = (
    ("no option", {}),
    ("clipnorm", {"clipnorm": 1.0}),
    ("global_clipnorm", {"global_clipnorm": 1.0}),
)
TENSORS = 200  # the benchmark's workload: 200 tensors

JAX_EXAMPLE = """\
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # two CPU devices, for the example

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optforge.generated.jax import novograd

mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
layout = {"w1": P("d", None), "b1": P(), "w2": P(None, "d")}  # sharded on dim 0, replicated, on dim 1
k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
params = {"w1": 0.3 * jax.random.normal(k1, (8, 4)), "b1": jnp.zeros(4), "w2": 0.3 * jax.random.normal(k2, (4, 2))}
params = {k: jax.device_put(v, NamedSharding(mesh, layout[k])) for k, v in params.items()}


def loss(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] - y) ** 2)


tx = novograd(learning_rate=0.1, global_clipnorm=1.0)
state = tx.init(params)  # each per-element state is laid out like its parameter


@jax.jit
def train_step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value


x = jax.random.normal(k3, (64, 8))
y = jnp.stack([jnp.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1)
losses = []
for step in range(20):
    params, state, value = train_step(params, state, x, y)
    losses.append(float(value))
print(f"loss: {losses[0]:.4f} at the first step, {losses[-1]:.4f} after 20 steps")
print("w1 sharding:", params["w1"].sharding.spec, "| its momentum m:", state.m["w1"].sharding.spec)
"""


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"  # a pipe inside a table cell, escaped


def _rows(p: Program) -> list[str]:
    rows = []
    for label, options in OPTION_SETS:
        c = communication(p, options)
        what = [f"{_code(r)} per tensor" for r in c["per_tensor"]] + [_code(r) for r in c["over_all"]]
        scalars = c["scalars"](TENSORS)
        gathered = (
            ", ".join(
                _code(n) + (f" (where {_code(math_text(c['kept'][n]))})" if n in c["kept"] else "")
                for n in c["gathered"]
            )
            or "none"
        )
        rows.append(
            f"| [{p.rule}](optimizers/{p.module}.md) | {label} | {', '.join(what) or 'none'} |"
            f" {c['collectives']} | {scalars} | {4 * scalars} | {gathered} |"
        )
    return rows


def sharding_page(programs: list[Program], header: str) -> str:
    lines = [
        header,
        "",
        "# Sharded parameters",
        "",
        "Large models keep each parameter tensor split over devices. Element-wise work needs nothing: each",
        "device updates its shard and the shard's state. A reduction does: a norm per tensor (NovoGrad's",
        "second moment, Keras's `clipnorm`) must add the partial sums of the tensor's shards, and a norm over",
        "all tensors (`global_clipnorm`) those of every shard of every tensor; a per-shard norm is a different",
        "optimizer (the failure of FSDP's per-shard clipping, pytorch issue 88621).",
        "",
        "## JAX: `jit` with `NamedSharding`",
        "",
        "Put the parameters on the mesh and call the optimizer under `jit`, as with any optax transformation.",
        "The state is created with the parameters' layout (`zeros_like` keeps it), and XLA adds the shards'",
        "partial sums where a reduction needs them. Tested for every rule with no option, `clipnorm` and",
        "`global_clipnorm` on two host devices (`tests/test_sharding.py`): the sharded run equals the",
        "unsharded one to 1e-12 relative in float64 over 20 steps (rounding: the partial sums are added in",
        "another order), 1e-6 in float32, and every per-element state leaf keeps its parameter's sharding.",
        "JAX refuses a sharding that does not divide a dimension evenly, so uneven shards are not possible here.",
        "",
        "```python",
        JAX_EXAMPLE.rstrip(),
        "```",
        "",
        "## PyTorch: DTensor and FSDP2",
        "",
        "Give the optimizer DTensor parameters (`torch.distributed.tensor`: sharded with `Shard(dim)` or",
        "replicated over a one-dimensional device mesh) and step it as usual. Its state is created like",
        "each parameter (an element-wise state with the parameter's placements, a per-tensor value",
        "replicated), its scratch buffers are DTensors laid out the same way, and the work runs on the local",
        "shards. A norm per tensor (NovoGrad's, `clipnorm`) adds the tensor's shards' partial sums: a pass",
        "over the tensors computes every tensor's first and all-reduces them together, in one collective",
        "(`torch_support.all_reduced`; one per link of a chain: `clipnorm`'s, then NovoGrad's of the clipped",
        "gradient), where DTensor alone made one per tensor and use (6 a step for NovoGrad on 3 sharded",
        "tensors, now 1); `global_clipnorm` adds the local partial sums of every sharded tensor and",
        "all-reduces them once. The test counts each step's collectives (`CommDebugMode`) and holds them to",
        "the table below. Tested with two processes on gloo",
        "(`tests/test_sharding.py`, `tests/sharded_torch.py`: the rules that show every structural feature",
        "with no option, `clipnorm` and `global_clipnorm`; shards of unequal sizes, on dim 0 and dim 1, and a",
        "replicated tensor): 20 steps equal the unsharded run to 1e-12 in float64 (8e-16 measured) and 1e-6",
        "in float32 (4e-7). FSDP2's `fully_shard` gives the optimizer such DTensors: an MLP under it, trained",
        "with NovoGrad and `global_clipnorm` for 10 steps, equals the unsharded model to 1e-14, and one saved",
        "through `torch.distributed.checkpoint` (`get_optimizer_state_dict`) resumes bit for bit on the same",
        "ranks, and in one process on the model unsharded (the checkpoint resharded on load: `dcp.load`,",
        "`set_optimizer_state_dict`) to 1e-12 (0 for Adagrad, 3e-16 for NovoGrad, whose norms were sums of two",
        "shards). The plain path only (the Numba and Triton kernels take no tensor subclass); not yet tested:",
        "meshes of more than one dimension.",
        "",
        "A rule whose step needs each tensor whole, a reduction over one axis or a matrix product (a column",
        "of a matrix sharded by rows, `X X^T`), gathers it: for each sharded parameter the optimizer",
        "all-gathers the parameter, its gradient (after the options' stages, which run on the shards) and",
        "each state shaped like it, runs the rule's step on the whole tensors, and writes each rank's shard",
        "back; a state with an axis reduced (Adafactor's rows and columns) is kept whole, replicated. Every",
        "rank computes the whole step (Muon's Newton-Schulz iteration on every rank, as the simple",
        "distributed Muon implementations do), and the result is the unsharded run's bit for bit where no",
        "option reduces (0 in the tests for Muon and Adafactor, as above; under `fully_shard`, 2e-16 measured",
        "once, not a test). The rules",
        "that gather: "
        + (
            ", ".join(f"[{p.rule}](optimizers/{p.module}.md)" for p in programs if whole_tensor_reason(p))
            or "none"
        )
        + "; the table's last column names what is gathered.",
        "",
        "## What each optimizer communicates per step",
        "",
        f"With every tensor sharded, for {TENSORS} tensors in float32 (scalars are all-reduced; the element-wise",
        "work communicates nothing). Reductions that a pass over the tensors computes travel together; a",
        "reduction that reads another waits for it: one all-reduce per link of the chain.",
        "",
        "| optimizer | options | reductions over shards | all-reduces | scalars | bytes | all-gathered per sharded tensor |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [row for p in programs for row in _rows(p)]
    return "\n".join(lines) + "\n"


__all__ = ["sharding_page", "JAX_EXAMPLE"]
