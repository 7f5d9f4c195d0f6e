"""A state that only the tensors passing a test of their shape use is kept for those tensors alone
(``compiler/passes/tensor_states.py``): torch's Muon keeps AdamW's second moment for the tensors that are
not matrices, and stored one for every matrix too (4 bytes per parameter for nothing; a sharded matrix
all-gathered it every step)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import sympy as sp
from drivers import assert_close
from rulekit import load

from optforge.compiler.dsl import Eq, Rule, g, rank, sqrt, w, where
from optforge.compiler.ir import Form
from optforge.compiler.pipeline import compile_rule
from optforge.rules._keras_options import keras_options

SHAPES = [(3, 4), (5,), (), (2, 3, 2)]


def matrix_momentum(read_everywhere: bool = False) -> Rule:
    """Momentum for the matrices, a scaled gradient for the rest (``read_everywhere``: every tensor also
    reads the momentum, so every tensor keeps it)."""
    r = Rule("MatrixMomentum" + ("Everywhere" if read_everywhere else ""), title="momentum for matrices")
    lr = r.learning_rate(0.1)
    beta = r.hyper("beta", 0.9, "[0, 1)", "momentum")
    m = r.state("m", 0, "momentum of the matrices")
    v = r.state("v", 0, "sum of squares, every tensor's")
    matrix = r.let("matrix", Eq(rank, 2), "a matrix")
    r.assign(m, beta * m + g, "momentum", only_if=Eq(rank, 2))
    r.assign(v, v + g**2, "sum of squares")
    step = where(matrix, m, g / sqrt(v + 1))
    r.assign(w, w - lr * (step + m / 1000 if read_everywhere else step), "update")
    return r


@pytest.mark.parametrize("form", [Form.IN_PLACE, Form.INCREMENT])
def test_a_state_only_matrices_use_is_kept_for_matrices(form):
    for rule in (matrix_momentum(), keras_options(matrix_momentum())):  # the options' guards wrap the tests
        program = compile_rule(rule, form=form)
        assert program.state("m").kept == Eq(rank, 2)
        assert program.state("v").kept is sp.true
    everywhere = compile_rule(keras_options(matrix_momentum(read_everywhere=True)), form=form)
    assert everywhere.state("m").kept is sp.true


def transcription(params0, grads, lr=0.1, beta=0.9):
    """The rule's equations in NumPy, written here: the parameters after the steps."""
    params = [p.copy() for p in params0]
    m = [np.zeros_like(p) for p in params0]
    v = [np.zeros_like(p) for p in params0]
    for gs in grads:
        for i, x in enumerate(gs):
            v[i] = v[i] + x**2
            if params[i].ndim == 2:
                m[i] = beta * m[i] + x
                params[i] = params[i] - lr * m[i]
            else:
                params[i] = params[i] - lr * x / np.sqrt(v[i] + 1)
    return params


def test_each_backend_keeps_it_for_matrices_only_and_steps_as_written(tmp_path):
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    rule = keras_options(matrix_momentum())
    mods = load(rule, tmp_path)
    rng = np.random.default_rng(0)
    params0 = [rng.normal(size=s) for s in SHAPES]
    grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(5)]
    want = transcription(params0, grads)
    kept = [len(s) == 2 for s in SHAPES]

    def sizes(leaves):  # the matrix's state shaped like it, the others' empty
        arrays = [np.asarray(x) for x in leaves]
        return [x.shape == s if k else x.size == 0 for x, s, k in zip(arrays, SHAPES, kept)]

    opt = mods["numpy"].MatrixMomentum()
    params = [p.copy() for p in params0]
    state = opt.init(params)
    for gs in grads:
        params, state = opt.step(params, gs, state)
    assert_close(params, want, 1e-12, "numpy")
    assert all(sizes(state.m)) and all(np.shape(v) == s for v, s in zip(state.v, SHAPES))

    tx = mods["jax"].matrix_momentum()  # float64: the suite enables x64 (conftest.py)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    update = jax.jit(tx.update)
    for gs in grads:
        updates, state = update([jnp.asarray(x) for x in gs], state, params)
        params = optax.apply_updates(params, updates)
    assert_close([np.asarray(p) for p in params], want, 1e-12, "jax")
    assert all(sizes(jax.tree.leaves(state.m)))

    # torch: and a checkpoint taken after two steps resumes to the same parameters
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = mods["torch"].MatrixMomentum(params, fused=False)
    for k, gs in enumerate(grads):
        if k == 2:
            saved = copy.deepcopy(opt.state_dict())  # its tensors are the ones the steps update
            resumed = [torch.tensor(p.detach().numpy(), requires_grad=True) for p in params]
        for p, x in zip(params, gs):
            p.grad = torch.tensor(x)
        opt.step()
    assert_close([p.detach().numpy() for p in params], want, 1e-12, "torch")
    assert all(sizes([opt.state[p]["m"] for p in params]))
    again = mods["torch"].MatrixMomentum(resumed, fused=False)
    again.load_state_dict(saved)
    for gs in grads[2:]:
        for p, x in zip(resumed, gs):
            p.grad = torch.tensor(x)
        again.step()
    assert_close([p.detach().numpy() for p in resumed], [p.detach().numpy() for p in params], 0.0, "resumed")


def test_a_state_that_exists_under_a_flag_is_written_under_only_if_with_the_options():
    """``exists_if=amsgrad`` with the equation's ``only_if=amsgrad`` (the guard as a ``where`` inside the
    options' ``where(is_update, ..., x)``): the write was seen under ``is_update`` alone, and the rule was
    refused with "guard the equation with only_if=amsgrad", which it already was."""
    r = Rule("FlagState", title="a state that exists under a flag")
    lr = r.learning_rate(0.1)
    amsgrad = r.flag("amsgrad", False, "keep the largest second moment")
    v = r.state("v", 0, "second moment")
    v_max = r.state("v_max", 0, "largest second moment", exists_if=amsgrad)
    r.assign(v, 0.9 * v + 0.1 * g**2, "second moment")
    r.assign(v_max, where(v > v_max, v, v_max), "largest", only_if=amsgrad)
    r.assign(w, w - lr * g / (sqrt(where(amsgrad, v_max, v)) + 1e-8), "update")
    for form in (Form.IN_PLACE, Form.INCREMENT):
        program = compile_rule(keras_options(r), form=form)
        assert program.state("v_max").allocated_when == sp.Symbol("amsgrad")


def test_a_state_saved_with_the_array_a_tensor_no_longer_keeps_is_a_clear_error():
    """A NumPy or JAX state that holds TorchMuon's ``exp_avg_sq`` for a matrix (as every tensor kept it
    before): the error says which tensors keep it and what to do."""
    import jax.numpy as jnp

    import optforge.generated.jax as generated_jax
    import optforge.generated.numpy as generated_numpy

    params, grads = [np.ones((3, 2)), np.ones(3)], [np.ones((3, 2)), np.ones(3)]
    opt = generated_numpy.TorchMuon(learning_rate=0.01)
    state = opt.init(params)._replace(exp_avg_sq=[np.zeros((3, 2)), np.zeros(3)])
    with pytest.raises(ValueError, match=r"kept only for the tensors where rank != 2: for this parameter an"):
        opt.step(params, grads, state)
    tx = generated_jax.torch_muon(0.01)
    leaves = [jnp.asarray(p) for p in params]
    state = tx.init(leaves)._replace(exp_avg_sq=[jnp.zeros((3, 2)), jnp.zeros(3)])
    with pytest.raises(ValueError, match=r"kept only for the tensors where rank != 2: for this parameter an"):
        tx.update([jnp.asarray(g) for g in grads], state, leaves)
