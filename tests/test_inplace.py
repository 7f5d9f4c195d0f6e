"""backends/inplace.py: a printed element-wise statement and its three-address form compute the same.

Random expression trees over per-element arrays and Python scalars (the shapes the printers write: sums,
products, quotients, powers, negation and the element-wise calls) are printed as Python, rewritten, and
both are run: in NumPy the results must be identical bit for bit (the same operations in the same
order), in torch within the last bit (its compound calls may round once where the expression rounds
twice). The oracle is the printed expression evaluated by Python itself.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from optforge.backends import inplace

ELEMENTS = ["a", "b", "c"]
SCALARS = ["k", "h", "2", "0.5"]
N = 257


def expression(rng: random.Random, depth: int, calls: dict[str, int]) -> str:
    """A random printed expression that reads at least one array."""
    if depth == 0 or rng.random() < 0.2:
        return rng.choice(ELEMENTS)
    kind = rng.random()
    left = expression(rng, depth - 1, calls)
    if kind < 0.45:
        right = expression(rng, depth - 1, calls) if rng.random() < 0.5 else rng.choice(SCALARS)
        op = rng.choice(["+", "-", "*", "/"])
        return f"({left} {op} {right})" if rng.random() < 0.5 else f"({right} {op} {left})"
    if kind < 0.55:
        return f"({left})**2"
    if kind < 0.65:
        return f"-{left} * {rng.choice(SCALARS)}"
    name, arity = rng.choice(list(calls.items()))
    if arity == 1:
        return f"{name}({left})"
    return f"{name}({left}, {expression(rng, depth - 1, calls)})"


def rewrite(ops: inplace.Ops, kind: str, target: str, code: str) -> tuple[list[str], int]:
    regs = inplace.Registers()
    ta = inplace.ThreeAddress(ops, {*ELEMENTS, "x", "y"}, regs)
    if kind == "bind":
        lines = ta.bind(target, code)
    elif kind == "set":
        lines = ta.overwrite(
            "{name}[...] = {value}" if ops is inplace.NUMPY else "{name}.copy_({value})", target, code
        )
    else:
        form = (
            {"add": "{name} += {value}", "sub": "{name} -= {value}"}
            if ops is inplace.NUMPY
            else {
                "add": "{name}.add_({value})",
                "sub": "{name}.sub_({value})",
            }
        )
        lines = ta.update(kind, form[kind], target, code)
    return lines, regs.count


NUMPY_CALLS = {"np.sqrt": 1, "np.abs": 1, "np.maximum": 2, "np.minimum": 2, "np.sign": 1, "np.exp": 1}
TORCH_CALLS = {"torch.sqrt": 1, "torch.abs": 1, "torch.maximum": 2, "torch.minimum": 2, "torch.sign": 1}


def _values(dtype, seed):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(N) * 3).astype(dtype) for n in ELEMENTS + ["x", "y"]}


def _printed(kind: str, target: str, code: str, env: dict, torch_form: bool) -> None:
    if kind == "bind":
        exec(f"{target} = {code}", env)
    elif kind == "set":
        exec(f"{target}[...] = {code}", env)
    else:
        exec(f"{target} {'+' if kind == 'add' else '-'}= {code}", env)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(40))
def test_numpy_three_address_code_equals_the_printed_expression_bit_for_bit(seed, dtype):
    rng = random.Random(seed)
    code = expression(rng, 4, NUMPY_CALLS)
    kind = rng.choice(["bind", "set", "add", "sub"])
    target = "t" if kind == "bind" else "x"
    lines, count = rewrite(inplace.NUMPY, kind, target, code)
    with np.errstate(all="ignore"):
        want = {"np": np, "k": 0.3, "h": -1.7, **_values(dtype, seed)}
        _printed(kind, target, code, want, False)
        got = {"np": np, "k": 0.3, "h": -1.7, **_values(dtype, seed)}
        for i in range(count):
            got[f"_s{i}"] = np.full(N, np.nan, dtype)  # scratch holds garbage between uses
        exec("\n".join(lines), got)
    assert np.array_equal(got[target], want[target], equal_nan=True), (code, lines)
    for name in ELEMENTS + ["y"]:  # inputs untouched
        assert np.array_equal(got[name], want[name], equal_nan=True), (name, code, lines)


@pytest.mark.parametrize("seed", range(40))
def test_torch_three_address_code_equals_the_printed_expression_to_the_last_bit(seed):
    torch = pytest.importorskip("torch")
    rng = random.Random(seed)
    code = expression(rng, 4, TORCH_CALLS)
    kind = rng.choice(["bind", "set", "add", "sub"])
    target = "t" if kind == "bind" else "x"
    lines, count = rewrite(inplace.TORCH, kind, target, code)
    values = {n: torch.from_numpy(v) for n, v in _values(np.float64, seed).items()}
    want = {"torch": torch, "k": 0.3, "h": -1.7, **{n: v.clone() for n, v in values.items()}}
    if kind == "set":
        exec(f"x.copy_({code})", want)
    elif kind == "bind":
        exec(f"t = {code}", want)
    else:
        exec(f"x.{kind}_({code})", want)
    got = {"torch": torch, "k": 0.3, "h": -1.7, **{n: v.clone() for n, v in values.items()}}
    for i in range(count):
        got[f"_s{i}"] = torch.full((N,), float("nan"), dtype=torch.float64)
    exec("\n".join(lines), got)
    a, b = got[target].numpy(), want[target].numpy()
    finite = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), finite), (code, lines)
    scale = np.maximum(np.abs(b[finite]), 1.0)  # one rounding of a product against the sum's size
    assert np.all(np.abs(a[finite] - b[finite]) <= 1e-13 * scale * 8), (code, lines)
    for name in ELEMENTS + ["y"]:
        assert torch.equal(got[name], want[name]), (name, code, lines)


def test_an_alias_of_a_register_is_a_copy():
    regs = inplace.Registers()
    ta = inplace.ThreeAddress(inplace.NUMPY, {"g", "h"}, regs)
    assert ta.bind("g", "g * 2") == ["g = np.multiply(g, 2, out=_s0)"]
    assert ta.bind("h", "g") == ["h = g.copy()"]  # g's register is written again later


def test_scalars_stay_python_and_unknown_calls_stay_as_printed():
    regs = inplace.Registers()
    ta = inplace.ThreeAddress(inplace.NUMPY, {"g", "m"}, regs)
    lines = ta.update("sub", "{name} -= {value}", "w", "lr * (1 - beta**t) * np.where(m > 0, g, m)")
    assert lines == ["np.multiply(lr * (1 - beta ** t), np.where(m > 0, g, m), out=_s0)", "w -= _s0"]
