"""A reduction over all tensors spans every torch parameter group.

NumPy's and JAX's optimizers take one list of tensors; torch's take parameter groups (different
hyperparameters for biases, say). A reduction over all tensors (``global_clipnorm``'s norm, a rule's own
``global_sum``: Polyak's step size, Prodigy-like estimates) was computed per group in torch: with two groups,
``SGD(global_clipnorm=1.0)`` clipped each group by its own norm (``[2, 0], [3]`` where NumPy and one torch
group give ``[2.4, 0], [3.2]``; a user's rule found it). Now every group's part is combined
(``RuleOptimizer.step`` runs the groups' steps side by side, ``over_groups``; ``share_global_norm``), so two
groups with the same hyperparameters equal one group and NumPy's optimizer on the same tensors, on the plain
path and the kernels'."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from cases import MACHINERY, RULES, skip_without_kernels
from drivers import assert_close, loss_kwargs, problem, run

from optforge.compiler.dsl import Rule, g, global_sum, w

SHAPES = [(), (5,), (4, 3), (2, 3, 2)]


def torch_in_two_groups(module, rule, hypers: dict, params0, grads, fused=False, second: dict | None = None):
    """The parameters after the steps of the torch optimizer with the tensors in two groups (the first
    two, the others; ``second``: the second group's own hyperparameters)."""
    import torch

    params = [torch.tensor(p, requires_grad=True) for p in params0]
    kw = {("lr" if k == "learning_rate" else k): v for k, v in hypers.items()}
    groups = [{"params": params[:2]}, {"params": params[2:], **(second or {})}]
    opt = getattr(module, rule.name)(groups, **kw, fused=fused)
    for k, gs in enumerate(grads):
        for p, x in zip(params, gs):
            p.grad = torch.tensor(x)
        opt.step(**loss_kwargs(rule, k))
    return [p.detach().numpy() for p in params]


def own_global_reductions():
    """The registry's rules whose own step reduces over all tensors (the torch step is a generator)."""
    import optforge.generated.torch as gt

    return [r for r in RULES.values() if inspect.isgeneratorfunction(getattr(gt, r.name)._update)]


@pytest.mark.parametrize("fused", [False, True, "triton"], ids=["plain", "numba", "triton"])
@pytest.mark.parametrize("rule", MACHINERY, ids=[r.name for r in MACHINERY])
def test_global_clipnorm_clips_by_the_norm_over_every_group(rule, fused):
    """float64, 6 steps, a norm well above the clip: two groups equal NumPy's one list to 1e-12."""
    import optforge.generated.torch as gt

    skip_without_kernels(rule, fused if fused else None)
    if fused == "triton":
        pytest.importorskip("triton")
    hypers = {**rule.configs["default"], "global_clipnorm": 0.5}
    params0, grads = problem(6, shapes=SHAPES, scales=[1.0, 3.0, 10.0, 0.1], zero_first=False)
    want, _ = run("numpy", rule, hypers, params0, grads)
    got = torch_in_two_groups(gt, rule, hypers, params0, grads, fused=fused)
    assert_close(got, want, 1e-12, f"torch, two groups ({fused}) vs NumPy")


@pytest.mark.parametrize("rule", [pytest.param(r, id=r.name) for r in own_global_reductions()])
def test_a_rule_s_own_reduction_over_all_tensors_spans_the_groups(rule):
    """Polyak's step size reads the squared norm of every tensor's scaled gradient: two groups equal one."""
    import optforge.generated.torch as gt

    assert own_global_reductions(), "no rule of the registry reduces over all tensors itself"
    hypers = dict(rule.configs["default"])
    params0, grads = problem(6, shapes=SHAPES, scales=[1.0, 3.0, 10.0, 0.1], zero_first=False)
    want, _ = run("torch", rule, hypers, params0, grads)
    assert_close(torch_in_two_groups(gt, rule, hypers, params0, grads), want, 1e-12, "two groups vs one")


def test_groups_with_their_own_rates_share_the_sum_and_keep_their_rates(tmp_path):
    """A user's rule with a global sum and a global state, the groups at different rates: each group steps
    by its own rate, with the sum over every tensor (each read at its own group's rate), as a transcription
    of the rule over the two groups says."""
    import torch
    from rulekit import load

    r = Rule("SharedAgreement", title="a step scaled by the gradients' global agreement with the weights")
    lr = r.learning_rate(0.1)
    d = r.state("d", 0, "running agreement", scope="global")
    r.assign(d, 0.5 * d + global_sum(lr * g * w), "agreement over every tensor")
    r.assign(w, w - lr * g * (1 + d), "update")
    mods = load(r, tmp_path)
    params0, grads = problem(4, shapes=SHAPES, scales=[1.0, 1.0, 1.0, 1.0], zero_first=False)
    rates = [0.1, 0.1, 0.03, 0.03]

    ws, ds = [p.copy() for p in params0], [0.0, 0.0]
    for gs in grads:  # the transcription: one sum over all tensors, each group its own d from it
        total = sum(float(np.sum(a * x * p)) for a, x, p in zip(rates, gs, ws))
        ds = [0.5 * dd + total for dd in ds]
        ws = [p - a * x * (1 + ds[0 if i < 2 else 1]) for i, (a, x, p) in enumerate(zip(rates, gs, ws))]
    for fused in (False, True, "triton"):
        if fused == "triton" and not pytest.importorskip("triton"):
            continue
        params = [torch.tensor(p, requires_grad=True) for p in params0]
        opt = mods["torch"].SharedAgreement(
            [{"params": params[:2]}, {"params": params[2:], "lr": 0.03}], lr=0.1, fused=fused
        )
        for gs in grads:
            for p, x in zip(params, gs):
                p.grad = torch.tensor(x)
            opt.step()
        assert_close([p.detach().numpy() for p in params], ws, 1e-12, f"fused={fused}")


def test_a_user_rule_s_reductions_over_all_tensors_on_every_kernel_path(tmp_path):
    """A user's rule (``optforge.load``: no Keras option) that reads its own sum of squares over all tensors,
    per element: Numba's kernels took Keras's ``global_sumsq_g`` in its place (0: the steps were 1e7 times
    too long), and Triton's, with two parameter groups, summed over one group (a helper's rules found both).
    Every path, in one group and in two, equals a NumPy transcription (float64, 1e-12)."""
    from rulekit import load, steps

    from optforge.compiler.dsl import global_max, global_norm

    r = Rule("UserGlobalNorm", title="normalised by the global norm, scaled by the largest gradient")
    lr = r.learning_rate(0.1)
    r.assign(
        w, w - lr * g / (global_norm(g) + 1e-8) * (1 + global_sum(g * w) / (1 + global_max(abs(g)))), "step"
    )
    mods = load(r, tmp_path)
    params0, grads = problem(4, shapes=SHAPES, scales=[1.0, 3.0, 10.0, 0.1], zero_first=False)
    want = [p.copy() for p in params0]
    for gs in grads:
        norm = np.sqrt(sum(float(np.sum(x**2)) for x in gs))
        dot = sum(float(np.sum(x * p)) for x, p in zip(gs, want))
        peak = max(float(np.max(np.abs(x))) for x in gs if x.size)
        want = [p - 0.1 * x / (norm + 1e-8) * (1 + dot / (1 + peak)) for p, x in zip(want, gs)]
    for path in ("numpy", "numpy fused", "torch", "torch fused", "torch triton"):
        got = steps(mods, r, params0, grads, path, **({"lr": 0.1} if path.startswith("torch") else {}))
        assert_close(got, want, 1e-12, path)
    for fused in (False, True, "triton"):
        got = torch_in_two_groups(mods["torch"], r, {"learning_rate": 0.1}, params0, grads, fused=fused)
        assert_close(got, want, 1e-12, f"two groups, fused={fused}")
