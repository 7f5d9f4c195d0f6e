"""The operation IR and its passes, one at a time, on hand-built input.

- ``passes/evaluation.py`` + ``passes/three_address.py`` + a backend's table: random sympy expressions over
  per-element arrays and Python scalars (sums, products, quotients, powers, negation, the element-wise
  calls) are printed by the backend's expression printer and lowered into operations; both are run. The
  oracle is the printed expression evaluated by Python itself: in NumPy the results must be identical bit
  for bit (the same operations in the same order), in torch within the last bit (its compound calls may
  round once where the expression rounds twice).
- ``backends/printer.py``'s ``OpPrinter``: hand-built operations printed with a table, in Python's precedence.
- ``passes/typing.py``: which names are arrays, on a hand-built rule IR; ``passes/conditions.py`` and
  ``passes/accumulators.py`` on hand-built assignments and sections.
- ``passes/hoist.py`` and ``evaluation.kernel_tree``: a fused kernel's invariants, their names and guards;
  the printed kernel code evaluated against sympy's value of the expression.
"""

from __future__ import annotations

import ast
import random

import numpy as np
import pytest
import sympy as sp

from optforge.backends.numpy.printer import NumPyBackend, NumPyPrinter
from optforge.backends.printer import OpPrinter
from optforge.backends.torch.printer import TorchBackend, TorchPrinter
from optforge.compiler import ops
from optforge.compiler.ir import Assign, Case, Program, Role, Scope
from optforge.compiler.passes import conditions, three_address
from optforge.compiler.passes.accumulators import accumulators
from optforge.compiler.passes.evaluation import Types, evaluation_tree
from optforge.compiler.passes.hoist import Invariants
from optforge.compiler.passes.typing import array_names

a, b, c, x, y, k, h = sp.symbols("a b c x y k h", real=True)
ELEMENTS = [a, b, c]
SCALARS = [k, h, sp.Integer(2), sp.Float(0.5)]
N = 257
TYPES = Types(arrays=frozenset("abcxy"), elements=frozenset("abcxy"), copies=True)


def expression(rng: random.Random, depth: int, calls: list) -> sp.Expr:
    """A random expression that reads at least one array."""
    if depth == 0 or rng.random() < 0.2:
        return rng.choice(ELEMENTS)
    kind = rng.random()
    left = expression(rng, depth - 1, calls)
    if kind < 0.45:
        right = expression(rng, depth - 1, calls) if rng.random() < 0.5 else rng.choice(SCALARS)
        op = rng.choice(["+", "-", "*", "/"])
        p, q = (left, right) if rng.random() < 0.5 else (right, left)
        return {"+": p + q, "-": p - q, "*": p * q, "/": p / q}[op]
    if kind < 0.55:
        return left**2
    if kind < 0.65:
        return -left * rng.choice(SCALARS)
    if kind < 0.7:
        return sp.sqrt(sp.Abs(left))
    if kind < 0.78:  # a select on a condition over arrays
        other = expression(rng, depth - 1, calls) if rng.random() < 0.6 else rng.choice(SCALARS)
        return (
            sp.Piecewise((left, condition(rng)), (other, True))
            if rng.random() < 0.5
            else sp.Piecewise((other, condition(rng)), (left, True))
        )
    fn, arity = rng.choice(calls)
    return fn(left) if arity == 1 else fn(left, expression(rng, depth - 1, calls))


def condition(rng: random.Random):
    """A comparison of arrays and numbers, or two joined by and / or, or negated."""

    def compare():
        p = rng.choice(ELEMENTS)
        q = rng.choice(ELEMENTS + SCALARS)
        p, q = (p, q) if rng.random() < 0.5 else (q, p)
        return rng.choice([sp.Lt, sp.Le, sp.Gt, sp.Ge, sp.Eq, sp.Ne])(p, q)

    kind = rng.random()
    if kind < 0.6:
        return compare()
    if kind < 0.75:
        return sp.And(compare(), compare())
    if kind < 0.9:
        return sp.Or(compare(), compare())
    return sp.Not(sp.And(compare(), compare()))


CALLS = [(sp.Abs, 1), (sp.Max, 2), (sp.Min, 2), (sp.sign, 1), (sp.exp, 1)]


def lower(
    backend, printer, kind: str, target: str, expr: sp.Expr
) -> tuple[list[str], three_address.Registers]:
    regs = three_address.Registers()
    tree = evaluation_tree(expr, TYPES)
    if kind == "bind":
        lowered = three_address.bind(target, tree, backend.target(printer), regs)
    elif kind == "set":
        lowered = three_address.overwrite(target, tree, backend.target(printer), regs)
    else:
        lowered = three_address.update(kind, target, tree, backend.target(printer), regs)
    three_address.verify(lowered, regs)
    return OpPrinter(printer, backend.ops, backend.forms).statements(lowered.body), regs


def _values(dtype, seed):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(N) * 3).astype(dtype) for n in "abcxy"}


def _printer(cls):
    p = cls("test", set("abcxy"))
    p.elements = set("abcxy")
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(40))
def test_numpy_operations_equal_the_printed_expression_bit_for_bit(seed, dtype):
    rng = random.Random(seed)
    expr = expression(rng, 4, CALLS)
    kind = rng.choice(["bind", "set", "add", "sub"])
    target = "t" if kind == "bind" else "x"
    p = _printer(NumPyPrinter)
    code = p.doprint(expr)
    lines, regs = lower(NumPyBackend(), p, kind, target, expr)
    with np.errstate(all="ignore"):
        want = {"np": np, "math": __import__("math"), "k": 0.3, "h": -1.7, **_values(dtype, seed)}
        exec(
            {"bind": "{t} = {c}", "set": "{t}[...] = {c}", "add": "{t} += {c}", "sub": "{t} -= {c}"}[
                kind
            ].format(t=target, c=code),
            want,
        )
        got = {"np": np, "math": __import__("math"), "k": 0.3, "h": -1.7, **_values(dtype, seed)}
        for r in regs.names():
            got[r] = np.full(N, np.nan, dtype)  # scratch holds garbage between uses
        for r in regs.mask_names():
            got[r] = np.random.default_rng(seed).random(N) < 0.5
        exec("\n".join(lines), got)
    assert np.array_equal(got[target], want[target], equal_nan=True), (code, lines)
    for name in "abcy":  # inputs untouched
        assert np.array_equal(got[name], want[name], equal_nan=True), (name, code, lines)


@pytest.mark.parametrize("seed", range(40))
def test_torch_operations_equal_the_printed_expression_to_the_last_bit(seed):
    torch = pytest.importorskip("torch")
    rng = random.Random(seed)
    expr = expression(rng, 4, CALLS)
    kind = rng.choice(["bind", "set", "add", "sub"])
    target = "t" if kind == "bind" else "x"
    p = _printer(TorchPrinter)
    code = p.doprint(expr)
    lines, regs = lower(TorchBackend(), p, kind, target, expr)
    values = {n: torch.from_numpy(v) for n, v in _values(np.float64, seed).items()}
    from optforge.runtime import torch_support

    modules = {"torch": torch, "torch_support": torch_support}  # what a generated torch module imports
    want = {**modules, "k": 0.3, "h": -1.7, **{n: v.clone() for n, v in values.items()}}
    exec(
        {"bind": "t = {c}", "set": "x.copy_({c})", "add": "x.add_({c})", "sub": "x.sub_({c})"}[kind].format(
            c=code
        ),
        want,
    )
    got = {**modules, "k": 0.3, "h": -1.7, **{n: v.clone() for n, v in values.items()}}
    for r in regs.names():
        got[r] = torch.full((N,), float("nan"), dtype=torch.float64)
    for r in regs.mask_names():
        got[r] = torch.rand(N) < 0.5
    exec("\n".join(lines), got)
    u, v = got[target].numpy(), want[target].numpy()
    finite = np.isfinite(v)
    assert np.array_equal(np.isfinite(u), finite), (code, lines)
    scale = np.maximum(np.abs(v[finite]), 1.0)  # one rounding of a product against the sum's size
    assert np.all(np.abs(u[finite] - v[finite]) <= 1e-13 * scale * 8), (code, lines)
    for name in "abcy":
        assert torch.equal(got[name], want[name]), (name, code, lines)


def test_the_evaluation_tree_is_the_printed_expressions_python_tree():
    lr, beta, t, eps, m, u = sp.symbols("lr beta t eps m u")
    types = Types(arrays=frozenset({"m", "u"}), elements=frozenset({"m", "u"}))
    tree = evaluation_tree(lr * m / ((1 - beta**t) * (eps + u)), types)
    # lr*m/((1 - beta**t)*(eps + u)): (lr * m) / ((1 - beta**t) * (eps + u)), scalars one leaf each
    assert isinstance(tree, ops.Bin) and tree.op == "/"
    assert tree.a == ops.Bin("*", ops.Leaf(lr, ops.Kind.SCALAR, ops.Prec.ATOM), ops.Name(ops.Value("m")))
    assert tree.b.op == "*" and tree.b.a.expr == 1 - beta**t and tree.b.a.prec == ops.Prec.ARITH
    # a leading minus binds to the first factor, as Python reads `-lr*m`
    neg = evaluation_tree(-lr * m * u, types)
    assert neg == ops.Bin(
        "*", ops.Bin("*", ops.Neg(ops.Leaf(lr, ops.Kind.SCALAR, ops.Prec.ATOM)), neg.a.b), neg.b
    )


def test_an_alias_of_a_register_is_a_copy():
    p = _printer(NumPyPrinter)
    regs = three_address.Registers()
    be = NumPyBackend()
    printed = OpPrinter(p, be.ops, be.forms)
    first = three_address.bind("x", evaluation_tree(2 * a, TYPES), be.target(p), regs)
    assert printed.statements(first.body) == ["x = np.multiply(2, a, out=_s0)"]
    second = three_address.bind("y", evaluation_tree(x, TYPES), be.target(p), regs)
    assert printed.statements(second.body) == ["y = x.copy()"]  # x's register is written again later


def test_scalars_stay_python_and_a_select_is_a_mask_and_a_masked_copy():
    lr, beta, t = sp.symbols("lr beta t")
    p = _printer(NumPyPrinter)
    be = NumPyBackend()
    expr = lr * (1 - beta**t) * sp.Piecewise((b, a > 0), (a, True))
    regs = three_address.Registers()
    lowered = three_address.update("sub", "w", evaluation_tree(expr, TYPES), be.target(p), regs)
    assert OpPrinter(p, be.ops, be.forms).statements(lowered.body) == [
        "np.greater(a, 0, out=_m0)",
        "np.copyto(_s0, a)",
        "np.copyto(_s0, b, where=_m0)",
        "np.multiply(lr * (1 - beta**t), _s0, out=_s0)",
        "w -= _s0",
    ]
    assert regs.names() == ["_s0"] and regs.mask_names() == ["_m0"]


@pytest.mark.parametrize(
    "expr",
    [
        sp.Piecewise((x, a > 0), (b, True)),  # the target is the value taken where the mask holds
        sp.Piecewise((b, a > 0), (x, True)),  # ... where it does not
        sp.Piecewise((x, a > 0), (0, True)),
        sp.Piecewise((2 * x, a > 0), (x, True)),
        sp.Piecewise((x, (x > 0) & (b < 1)), (sp.Piecewise((b, x < -1), (-x, True)), True)),
    ],
    ids=str,
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_select_that_reads_the_buffer_it_overwrites(expr, backend):
    """``x[...] = where(c, x, b)``: the masked copy must not overwrite x before it is read."""
    p = _printer(NumPyPrinter if backend == "numpy" else TorchPrinter)
    be = NumPyBackend() if backend == "numpy" else TorchBackend()
    lines, regs = lower(be, p, "set", "x", expr)
    values = _values(np.float64, 5)
    want = np.asarray(
        sp.lambdify(list(sp.symbols("a b x", real=True)), expr, "numpy")(
            values["a"], values["b"], values["x"]
        ),
        np.float64,
    )
    if backend == "numpy":
        got = {"np": np, **values}
        got.update({r: np.full(N, np.nan) for r in regs.names()})
        got.update({r: np.zeros(N, bool) for r in regs.mask_names()})
        exec("\n".join(lines), got)
        assert np.array_equal(got["x"], want), lines
    else:
        torch = pytest.importorskip("torch")
        got = {"torch": torch, **{n: torch.from_numpy(v) for n, v in values.items()}}
        got.update({r: torch.full((N,), float("nan"), dtype=torch.float64) for r in regs.names()})
        got.update({r: torch.zeros(N, dtype=torch.bool) for r in regs.mask_names()})
        exec("\n".join(lines), got)
        assert np.array_equal(got["x"].numpy(), want), lines


def test_the_op_printer_writes_the_table_in_pythons_precedence():
    p = _printer(NumPyPrinter)
    printer = OpPrinter(p, NumPyBackend.ops, NumPyBackend.forms)
    leaf = lambda e: ops.Leaf(sp.sympify(e), ops.Kind.SCALAR, ops.Prec.ATOM)  # noqa: E731
    assert printer.expr(ops.Bin("-", leaf("p"), ops.Bin("-", leaf("q"), leaf("r")))) == "p - (q - r)"
    assert printer.expr(ops.Bin("**", ops.Neg(leaf("p")), leaf(2))) == "(-p) ** 2"
    assert (
        printer.expr(ops.IfExp(leaf("s"), ops.Bin("+", leaf("p"), leaf(1)), leaf(0))) == "p + 1 if s else 0"
    )
    out = ops.Value("_s0")
    op = ops.Op("Max", (ops.Name(ops.Value("g")), leaf("c")), out, bind="m", arrays=(True, False))
    assert printer.statement(op) == ["m = np.maximum(g, c, out=_s0)"]
    torch_printer = OpPrinter(_printer(TorchPrinter), TorchBackend.ops, TorchBackend.forms)
    assert torch_printer.statement(op) == [
        "m = torch.clamp(g, min=c, out=_s0) if g.dtype == _s0.dtype else _s0.copy_(torch.clamp(g, min=c))"
    ]
    with pytest.raises(Exception, match="no row in the table"):
        printer.statement(ops.Op("erf", (ops.Name(ops.Value("g")),), out))


def test_typing_marks_what_is_computed_from_an_array():
    w, g, lr, s, n = (sp.Symbol(v) for v in ("w", "g", "lr", "s", "n"))
    body = (
        Assign("s", 1, lr * 2, Role.LET, Scope.GLOBAL),  # from scalars: a Python value
        Assign("n", 1, sp.Symbol("v") + 1, Role.LET, Scope.GLOBAL),  # from a per-tensor state: an array
        Assign("w", 1, w - s * g * n, Role.PARAM),
    )
    program = Program("R", "r", "", "", (), "", None, (), (), (), (Case(sp.true, body),), {})
    scopes = {"w": Scope.ELEMENT, "g": Scope.ELEMENT, "v": Scope.TENSOR, "lr": Scope.GLOBAL}
    arrays = array_names(program, scopes, array_scopes={Scope.TENSOR, Scope.ELEMENT})
    assert arrays == {"w", "g", "v", "n"}
    assert array_names(program, scopes, array_scopes={Scope.ELEMENT}, always={"lr"}) == {"w", "g", "lr", "s"}


def test_conditions_split_a_guard_into_its_python_test_and_its_element_wise_select():
    m, g, flag, t = (sp.Symbol(v) for v in ("m", "g", "flag", "t"))
    m1 = sp.Symbol("m.1")
    cond = sp.And(flag, t > 1, g > 0)  # flag and t > 1 are Python values, g > 0 an array test
    a = Assign("m", 1, sp.Piecewise((2 * g, cond), (m, True)), Role.STATE)
    static, inner = conditions.guard(a, {"g", "m"})
    assert static == sp.And(flag, t > 1)
    assert inner.expr == sp.Piecewise((2 * g, g > 0), (m, True))
    # a traced step (JAX) is an array: only the flag stays a Python test
    static, inner = conditions.guard(a, {"g", "m", "t"})
    assert static == flag and inner.expr == sp.Piecewise((2 * g, sp.And(t > 1, g > 0)), (m, True))
    # not "keep the previous value otherwise": no guard
    assert (
        conditions.guard(Assign("m", 2, sp.Piecewise((g, flag), (m1, True)), Role.STATE), {"g"}) is not None
    )
    assert conditions.guard(Assign("m", 1, sp.Piecewise((g, flag), (0, True)), Role.STATE), {"g"}) is None


def test_an_invariant_read_once_per_step_has_one_name_whatever_its_guards():
    lr, beta, flag, is_update, norm = (
        sp.Symbol(v) for v in ("learning_rate", "beta", "flag", "is_update", "norm")
    )
    inv = Invariants({"flag", "is_update"}, {"norm"}, {"learning_rate": "lr"})
    assert inv.hoist(lr, (flag, is_update)) == "c_lr"
    assert inv.hoist(lr, (is_update,)) == "c_lr"  # the same value: one name, computed where either use is
    assert inv.hoist(1 - beta, (is_update,)) == "c_one_minus_beta"
    assert inv.hoist(flag, (is_update,)) == "b_flag"
    assert [(h.name, h.guard) for h in inv.step] == [
        ("c_lr", is_update),
        ("c_one_minus_beta", is_update),
        ("b_flag", sp.true),
    ]
    # a per-tensor value is computed where it is first read, under that use's guard: one name per guard
    assert inv.hoist(sp.sqrt(norm), (flag,)) == "c_sqrt_norm"
    assert inv.hoist(sp.sqrt(norm), (is_update,)) == "c_sqrt_norm_2"
    assert [h.name for h in inv.flush()] == ["c_sqrt_norm", "c_sqrt_norm_2"] and not inv.pending


def test_an_invariant_is_named_after_what_it_holds_or_numbered_where_that_is_long():
    clip, s, t, b1, wd = (sp.Symbol(v) for v in ("clipnorm", "sumsq_g", "t", "b1", "weight_decay"))
    inv = Invariants(set(), {"sumsq_g"}, {})
    assert inv.hoist(sp.Max(clip, sp.sqrt(s)), ()) == "c_max_clipnorm_sqrt_sumsq_g"
    assert inv.hoist(1 - b1 ** (t + 1), ()) == "c_one_minus_b1_pow_t_plus_one"
    assert inv.hoist(sp.Ne(wd, 0), ()) == "b_weight_decay_is_not_zero"
    long = sp.Max(clip * wd, sp.sqrt(s + wd * b1))  # max_clipnorm_times_weight_decay_sqrt_... (over 48)
    assert inv.hoist(long, ()) == "c_2"  # the third c_ value: numbered from 0


def test_a_reduction_over_all_tensors_is_an_accumulator_tested_in_python_and_selected_on_arrays():
    from optforge.compiler.dsl import TensorMax, TensorSum
    from optforge.compiler.ir import Section, SectionKind

    g, flag, t, norm, peak = (sp.Symbol(v) for v in ("g", "flag", "t", "norm", "peak"))
    section = Section(
        SectionKind.REDUCE,
        (
            Assign("norm", 1, sp.Piecewise((TensorSum(g**2), sp.And(flag, t > 1)), (0, True)), Role.REDUCE),
            Assign("peak", 1, TensorMax(sp.Abs(g)), Role.REDUCE),
        ),
    )
    first, second = accumulators(section, {"g"})
    assert (first.name, first.kind, first.step, first.static) == (
        "norm",
        "sum",
        norm + TensorSum(g**2),
        sp.And(flag, t > 1),
    )
    assert (second.kind, second.step, second.static) == ("max", sp.Max(peak, TensorMax(sp.Abs(g))), sp.true)
    traced, _ = accumulators(section, {"g", "t"})  # JAX: the step is traced, its test a select
    assert traced.static == flag
    assert traced.step == sp.Piecewise((norm + TensorSum(g**2), t > 1), (norm, True))


@pytest.mark.parametrize("flag_value", [True, False])
def test_a_kernel_reads_its_invariants_by_name_each_computed_where_its_branch_runs(flag_value):
    from optforge.backends.fused.printer import KernelPrinter
    from optforge.compiler.passes.evaluation import kernel_tree
    from optforge.compiler.passes.hoist import hoist_tree

    m, g, beta, flag = (sp.Symbol(v) for v in ("m", "g", "beta", "flag"))
    expr = sp.Piecewise((beta * m + (1 - beta) * g**2 - 1, flag), (sp.sqrt(m), True))
    types = Types(arrays=frozenset({"m", "g"}), elements=frozenset({"m", "g"}))
    inv = Invariants({"flag"}, set(), {})
    tree, used = hoist_tree(kernel_tree(expr, types), inv)
    code = OpPrinter(KernelPrinter("test", set(), {}), {}, {}).expr(tree)
    guards = {h.name: h.guard for h in inv.step}
    assert used == set(guards)
    read = list(ast.walk(ast.parse(code)))  # every invariant by name: no other name, no literal
    assert {n.id for n in read if isinstance(n, ast.Name)} == used | {"m", "g", "math"}
    assert not any(isinstance(n, ast.Constant) for n in read)
    assert guards[inv.keys[(sp.srepr(1 - beta), "")]] == flag  # computed only where its branch runs
    # the oracle: the expression's value, by sympy; the invariants as prepare_<case> computes them
    values = {m: 0.7, g: -1.3, beta: 0.9, flag: flag_value}
    env = {"math": __import__("math"), "np": np, "m": 0.7, "g": -1.3}
    for h in inv.step:
        holds = bool(h.guard.subs(values)) if h.guard is not sp.true else True
        value = h.expr.subs(values)
        env[h.name] = (bool(value) if h.boolean else float(value)) if holds else 0.0
    assert eval(code, env) == pytest.approx(float(expr.subs(values)), rel=1e-15)


def test_the_verifier_rejects_a_register_read_before_it_is_written():
    regs = three_address.Registers()
    regs.take()
    s0 = ops.Value("_s0")
    bad = three_address.Lowered((ops.Update("sub", "w", ops.Name(s0)),), branched=False)
    with pytest.raises(ValueError, match="reads the scratch register _s0 before"):
        three_address.verify(bad, regs)
    good = three_address.Lowered(
        (ops.Op("neg", (ops.Name(ops.Value("g")),), s0), ops.Update("sub", "w", ops.Name(s0))), branched=False
    )
    three_address.verify(good, regs)
    regs.named["m_hat"] = "_s0"  # _s0 now holds m_hat for the rest of the pass
    with pytest.raises(ValueError, match="the register of m_hat"):
        three_address.verify(good, regs)
