"""Run rules' torch optimizers on DTensor parameters over two CPU processes (gloo), and without sharding.

Run in a subprocess by ``tests/test_sharding.py``: ``python tests/sharded_torch.py PORT FOLDER RULE[:reduces] ...``
(``:reduces``: the rule reduces over a tensor or over all tensors itself, NovoGrad's norm) starts two
processes (``torch.multiprocessing``, gloo on 127.0.0.1:PORT) and prints, from rank 0, one JSON object by
rule with, per option set and dtype, the largest relative difference between the sharded run (each
parameter a DTensor: sharded on dim 0, on dim 1 or replicated; shards of unequal sizes) and the unsharded
one (parameters and state, after every step: float64 with global_clipnorm, and for a rule that reduces
itself also with clipnorm and with no option; float32 with no option), the states not laid out like their
parameter (an element-wise state must have the parameter's placements; a per-tensor one is replicated), and
the collectives of each sharded step (``CommDebugMode``: DTensor's and torch.distributed's).
A rule that reduces itself also trains an MLP under FSDP2's ``fully_shard`` with ``global_clipnorm``
(``fully_shard/float64``), and resumes one from a ``torch.distributed.checkpoint`` saved in FOLDER
(``checkpoint/float64``: the largest absolute difference, 0 when bit for bit), and then, in the starting
process, resumes that checkpoint unsharded in one process (``resume_unsharded/float64``: another number of
processes than saved it).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from optforge.runtime import common

#: (shape, placement: a dimension sharded over the two ranks, or None for replicated)
LAYOUT = [((5, 3), 0), ((7,), 0), ((3, 5), 1), ((4,), None)]
SCALES = [1.0, 1e-3, 1e3, 10.0]
#: options whose reductions cross the shards, and none
OPTION_SETS = {"none": {}, "clipnorm": {"clipnorm": 0.5}, "global_clipnorm": {"global_clipnorm": 0.5}}
STEPS = 20


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    if a.shape != b.shape:
        return float("inf")
    if np.array_equal(a, b, equal_nan=True):
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_rule(rule, mesh, dtype: torch.dtype, options: dict) -> tuple[float, list[str], list[int]]:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    import optforge.generated.torch as gen

    rng = np.random.default_rng(7)
    full = [torch.tensor(rng.normal(size=s), dtype=dtype) for s, _ in LAYOUT]
    grads = [[torch.tensor(c * rng.normal(size=s), dtype=dtype) for (s, _), c in zip(LAYOUT, SCALES)]]
    for _ in range(STEPS - 1):
        grads.append([torch.tensor(c * rng.normal(size=s), dtype=dtype) for (s, _), c in zip(LAYOUT, SCALES)])
    placements = [[Replicate()] if dim is None else [Shard(dim)] for _, dim in LAYOUT]
    hypers = {"lr": 0.01} if rule.hypers["learning_rate"].default is None else {}
    plain = [torch.nn.Parameter(p.clone()) for p in full]
    sharded = [torch.nn.Parameter(distribute_tensor(p.clone(), mesh, pl)) for p, pl in zip(full, placements)]
    cls = getattr(gen, rule.name)
    ref, opt = cls(plain, **hypers, **options, fused=False), cls(sharded, **hypers, **options, fused=False)
    worst, misplaced, collectives = 0.0, [], []
    group = opt.param_groups[0]
    scopes = {name: scope for name, scope, _ in opt._states(group)}
    for gs in grads:
        for p, q, x, pl in zip(plain, sharded, gs, placements):
            p.grad = x.clone()
            q.grad = distribute_tensor(x.clone(), mesh, pl)
        ref.step()
        with CommDebugMode() as comm:  # DTensor's collectives and torch.distributed's
            opt.step()
        collectives.append(comm.get_total_counts())
        for i, (p, q) in enumerate(zip(plain, sharded)):
            worst = max(worst, rel(q.full_tensor(), p))
            for name, a in ref.state[p].items():
                b = opt.state[q][name]
                worst = max(worst, rel(b.full_tensor(), a))
                # like the parameter where per element; replicated where per tensor or with an axis
                # reduced (a rule that gathers each tensor whole keeps its rows and columns whole), and
                # the empty stand-in of a state the parameter does not keep (common.PerTensor)
                laid_out = scopes[name] == "element" and a.dim() and common.kept(p.shape, scopes[name], group)
                want = tuple(q.placements) if laid_out else (Replicate(),)
                if tuple(b.placements) != want:
                    misplaced.append(
                        f"{name} of params[{i}]: {b.placements} (the parameter's {q.placements})"
                    )
    return worst, sorted(set(misplaced)), collectives


def run_fully_shard(rule, mesh, options: dict) -> float:
    """FSDP2: a small MLP under ``fully_shard`` (its parameters become DTensors sharded on dim 0, its
    gradients reduce-scattered), 10 steps of a loss on the same batches on both ranks, against the
    unsharded model: the largest relative difference of the parameters."""
    from torch.distributed.fsdp import fully_shard

    import optforge.generated.torch as gen

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        layers = [torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)]
        return torch.nn.Sequential(*layers).double()

    plain, sharded = model(), model()
    fully_shard(sharded, mesh=mesh)
    hypers = {"lr": 0.01} if rule.hypers["learning_rate"].default is None else {}
    cls = getattr(gen, rule.name)
    ref, opt = cls(plain.parameters(), **hypers, **options), cls(sharded.parameters(), **hypers, **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(8, 6, dtype=torch.float64, generator=generator)
        for m, o in ((plain, ref), (sharded, opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    return max(rel(q.full_tensor(), p) for p, q in zip(plain.parameters(), sharded.parameters()))


def run_checkpoint(rule, mesh, folder: str) -> float:
    """FSDP2 and ``torch.distributed.checkpoint``: 3 steps, the model's and optimizer's state saved
    (``get_optimizer_state_dict``), 3 more; a new model and optimizer loaded from it take the same 3 steps:
    the largest absolute difference of the parameters (0: resumed bit for bit)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    import optforge.generated.torch as gen

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
        fully_shard(m, mesh=mesh)
        return m

    hypers = {"lr": 0.01} if rule.hypers["learning_rate"].default is None else {}
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 6, dtype=torch.float64, generator=generator) for _ in range(6)]

    def train(m: torch.nn.Module, o: torch.optim.Optimizer, xs: list) -> None:
        for x in xs:
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()

    first = model()
    opt = getattr(gen, rule.name)(first.parameters(), **hypers)
    train(first, opt, batches[:3])
    dcp.save(
        {"model": get_model_state_dict(first), "optim": get_optimizer_state_dict(first, opt)},
        checkpoint_id=folder,
    )
    train(first, opt, batches[3:])
    after = [p.detach().full_tensor() for p in first.parameters()]  # a collective: on every rank
    if dist.get_rank() == 0:  # what a resume on another number of processes must reach (resume_unsharded)
        torch.save(after, os.path.join(folder, "after.pt"))
    second = model()
    again = getattr(gen, rule.name)(second.parameters(), **hypers)
    saved = {"model": get_model_state_dict(second), "optim": get_optimizer_state_dict(second, again)}
    dcp.load(saved, checkpoint_id=folder)
    set_model_state_dict(second, saved["model"])
    set_optimizer_state_dict(second, again, saved["optim"])
    train(second, again, batches[3:])
    return max(
        float((p.detach().full_tensor() - q.detach().full_tensor()).abs().max())
        for p, q in zip(first.parameters(), second.parameters())
    )


def resume_unsharded(rule, folder: str) -> float:
    """The checkpoint ``run_checkpoint`` saved from two processes, loaded by one process without a process
    group into the same MLP unsharded (``torch.distributed.checkpoint`` reshards it) and a new optimizer,
    the same 3 steps: the largest relative difference of the parameters from the two processes' run (the
    rule's norms summed over two shards there, over one tensor here: equal to rounding)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    import optforge.generated.torch as gen

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    hypers = {"lr": 0.01} if rule.hypers["learning_rate"].default is None else {}
    opt = getattr(gen, rule.name)(m.parameters(), **hypers)
    saved = {"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, opt)}
    dcp.load(saved, checkpoint_id=folder)
    set_model_state_dict(m, saved["model"])
    set_optimizer_state_dict(m, opt, saved["optim"])
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 6, dtype=torch.float64, generator=generator) for _ in range(6)]
    for x in batches[3:]:
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    want = torch.load(os.path.join(folder, "after.pt"))
    return max(rel(p.detach(), q) for p, q in zip(m.parameters(), want))


def worker(rank: int, port: int, folder: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from optforge.rules import registry

        mesh = init_device_mesh("cpu", (2,))
        rules = registry()
        results: dict = {}
        for entry in names:
            name, _, reduces = entry.partition(":")  # NAME:reduces, a rule that reduces itself
            for option, values in OPTION_SETS.items():
                # float32 once per rule, with the options off; float64 where a reduction crosses the
                # shards: global_clipnorm's for every rule, clipnorm's and the rule's own where it reduces
                dtypes = [torch.float32] if option == "none" else []
                if option == "global_clipnorm" or reduces:
                    dtypes.append(torch.float64)
                for dtype in dtypes:
                    err, misplaced, collectives = run_rule(rules[name], mesh, dtype, values)
                    key = f"{option}/{str(dtype).removeprefix('torch.')}"
                    results.setdefault(name, {})[key] = {
                        "rel": err,
                        "misplaced": misplaced,
                        "collectives": collectives,
                    }
            if reduces:  # FSDP2, with the reductions of the rule and of global_clipnorm
                err = run_fully_shard(rules[name], mesh, {"global_clipnorm": 0.5})
                results[name]["fully_shard/float64"] = {"rel": err, "misplaced": []}
                err = run_checkpoint(rules[name], mesh, os.path.join(folder, name))
                results[name]["checkpoint/float64"] = {"rel": err, "misplaced": []}
        if rank == 0:
            with open(os.path.join(folder, "results.json"), "w") as f:
                json.dump(results, f)
        # both ranks done with every collective before either tears gloo down (a rank leaving while the
        # other still talks to it may abort the process: seen once, under a loaded machine); not on an
        # error, where the other rank may never come (spawn reports the error and stops it)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    from optforge.rules import registry

    port, folder, entries = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    mp.spawn(worker, args=(port, folder, entries), nprocs=2, join=True)
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    for entry in entries:  # here, one process: the checkpoints of two resumed unsharded
        name, _, reduces = entry.partition(":")
        if reduces:
            err = resume_unsharded(registry()[name], os.path.join(folder, name))
            results[name]["resume_unsharded/float64"] = {"rel": err, "misplaced": []}
    print(json.dumps(results))
