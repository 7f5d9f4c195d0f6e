"""The hyperparameter cases that the NumPy, JAX and PyTorch API tests share.

Everything here is generated from the rule registry (each hyperparameter's kind, range and default), so
a new rule or hyperparameter is covered without editing a test: the registry as pytest parameters, valid
and invalid values, the pytest parameter lists of the hyperparameter checks and the messages they expect.
The backends differ only in how a test builds an optimizer, which stays in each test file.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from cases import RULES as _REGISTRY

RULES = list(_REGISTRY.values())
RULE_IDS = [r.name for r in RULES]
RULE_CONFIGS = [(r, name) for r in RULES for name in r.configs]
RULE_CONFIG_IDS = [f"{r.name}-{name}" for r, name in RULE_CONFIGS]


# --------------------------------------------------------------------------------------
# rules


@functools.cache
def state_scopes(rule) -> dict[str, str]:
    """State name -> "global" (one value), "tensor" (one 0-d value per parameter) or "element" (shaped
    like the parameter)."""
    from cases import compiled

    return {st.name: st.scope.name.lower() for st in compiled(rule).states}


def state_shape(rule, name: str, shape, hypers: dict | None = None) -> tuple:
    """The shape a parameter of ``shape`` keeps state ``name`` in: 0-d (one per tensor), the parameter's,
    or the parameter's with an axis reduced to length 1 (Adafactor's row and column moments)."""
    from cases import compiled

    st = next(s for s in compiled(rule).states if s.name == name)
    if st.scope.name == "TENSOR":
        return ()
    if not kept(st, shape, {**{n: h.default for n, h in rule.hypers.items()}, **(hypers or {})}):
        return (0,)
    if st.reduced == ("cover",):  # SM3's: one value per index of each axis (a 0-d tensor: one)
        return (sum(shape) if len(shape) else 1,)
    out = list(shape)
    for axis in st.reduced:  # an axis the parameter does not have is left out (a vector's -2)
        if not isinstance(axis, int):  # the axis its lengths choose (largest_axis): numpy.argsort's order
            order = list(np.argsort(shape)) if shape else []
            axis = int(order[-axis.rank_by_size]) - len(shape) if len(order) >= axis.rank_by_size else -9
        if -axis <= len(out):
            out[axis] = 1
    return tuple(out)


def kept(state, shape, hypers: dict | None = None) -> bool:
    """Whether a parameter of ``shape`` keeps ``state``: its ``kept`` test of the shape and ``hypers`` (the
    compiler's ``passes/tensor_states.py``), evaluated here on the shape's numbers (an empty array stands in
    where it fails)."""
    import sympy as sp

    from optforge.compiler.dsl import (
        Given,
        LargestLength,
        SecondLargestLength,
        TensorCols,
        TensorRank,
        TensorRows,
        TensorSize,
    )

    rows = shape[-2] if len(shape) >= 2 else 1
    cols = shape[-1] if shape else 1
    lengths = sorted(shape)
    values = {
        TensorRank: len(shape),
        TensorRows: rows,
        TensorCols: cols,
        TensorSize: math.prod(shape),
        LargestLength: lengths[-1] if lengths else 1,
        SecondLargestLength: lengths[-2] if len(lengths) >= 2 else 1,
    }
    test = state.kept.replace(lambda x: type(x) in values, lambda x: sp.Integer(values[type(x)]))
    hypers = hypers or {}
    named = {
        x: (sp.true if hypers.get(x.option) is not None else sp.false)
        if isinstance(x, Given)
        else sp.sympify(hypers[x.name])
        for x in test.free_symbols
    }
    return bool(test.xreplace(named))


def required(rule, lr_name: str = "learning_rate") -> dict:
    """The arguments a rule cannot do without: the learning rate when it has no default (as in optax).

    ``lr_name`` is what the backend calls the learning rate (``"lr"`` in torch).
    """
    return {lr_name: 0.01} if rule.hypers["learning_rate"].default is None else {}


# --------------------------------------------------------------------------------------
# valid values

CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")  # Keras: at most one of them
CLIPPING_VALUES = {"clipnorm": 1.0, "clipvalue": 0.5, "global_clipnorm": 2.0}


def is_option(h) -> bool:
    """One of Keras's shared options: ``None`` (its default) means off."""
    return h.optional and h.kind in ("float", "int")


def inside(h) -> float | int:
    """A valid value of ``h`` inside its range, other than its default and other than an "off" value.

    An int option gets the smallest valid int from 2 up (1 would make ``ema_overwrite_frequency`` trivial).
    """
    iv = h.interval
    if h.kind == "int":
        k = max(2, math.ceil(iv.low))
        if k == iv.low and not iv.low_closed:
            k += 1
        assert k in iv
        return k
    lo = iv.low if math.isfinite(iv.low) else -1.0
    hi = iv.high if math.isfinite(iv.high) else lo + 2.0
    value = lo + 0.37 * (hi - lo)
    assert value in iv and value != h.default and value != 0
    return value


def other_hypers(rule) -> dict:
    """A valid value different from the default for every hyperparameter but the learning rate.

    Taken from the rule's own configs where one sets it, otherwise chosen inside the range. Every option
    is given (an int for an int option), but only one of the clipping options, which one turning with the
    rule, so that the registry covers all three.
    """
    out = {}
    for name, h in rule.hypers.items():
        if h.kind == "learning_rate":
            continue
        found = [cfg[name] for cfg in rule.configs.values() if cfg.get(name) not in (h.default, None)]
        if found:
            out[name] = found[0]
        elif h.kind == "bool":
            out[name] = not h.default
        elif h.kind == "choice":  # another than the default
            out[name] = next(c for c in h.choices if c != h.default)
        else:
            out[name] = inside(h)
    assert all(name in rule.hypers for name in CLIPPING), rule.name
    keep = CLIPPING[RULE_IDS.index(rule.name) % len(CLIPPING)]
    for name in CLIPPING:
        if name != keep:
            out.pop(name)
    return out


def closed_ends(h) -> list:
    """The finite ends that ``h``'s range includes (ints for an int option)."""
    iv = h.interval
    ends = [
        x for x, closed in ((iv.low, iv.low_closed), (iv.high, iv.high_closed)) if closed and math.isfinite(x)
    ]
    return [int(x) for x in ends] if h.kind == "int" else [float(x) for x in ends]


def stored(h, value):
    """What the optimizer keeps for a valid ``value`` of ``h``: 0 of an option where it means off is None."""
    return None if (h.zero_is_off and value is not None and value == 0) else value


# --------------------------------------------------------------------------------------
# invalid values


def out_of_range(h) -> list:
    """Values outside ``h``'s range, generated from its declaration (ints for an int option)."""
    iv = h.interval
    if h.kind == "int":  # a float given to an int option is a type error: see WRONG_TYPE
        values = []
        if math.isfinite(iv.high):
            values.append(math.floor(iv.high) + 1 if iv.high_closed else math.ceil(iv.high))
        if math.isfinite(iv.low):
            values.append(math.ceil(iv.low) - 1 if iv.low_closed else math.floor(iv.low))
        if 0 not in iv and not h.zero_is_off and 0 not in values:
            values.append(0)
        return values
    values = [math.nan]
    if math.isfinite(iv.high):
        values.append(iv.high + 1.0)
    if math.isfinite(iv.low):
        values.append(iv.low - 1.0)
    if not iv.high_closed:
        values.append(float(iv.high))  # the open end itself (inf included)
    if not iv.low_closed:
        values.append(float(iv.low))
    return values


class Callable:
    """A callable (with a stable repr for the test ids): only the learning rate may be one."""

    def __call__(self, *args):
        return 0.5

    def __repr__(self) -> str:
        return "a_callable"


def wrong_types(h) -> list:
    """Values of a wrong type for a non-bool hyperparameter: None is valid for an option (off), and a
    float (even a whole one, nan or inf) is not an int."""
    values = ["0.5", True]
    if not is_option(h):
        values.append(None)
    if h.kind != "learning_rate":
        values.append(Callable())
    if h.kind == "int":
        values += [2.5, 2.0, math.nan, math.inf]
    return values


# --------------------------------------------------------------------------------------
# the messages the checks give


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def expected_range_message(name: str, interval, value) -> str:
    """``name``: the hyperparameter as the backend calls it (``lr`` for the learning rate in torch)."""
    lo = "[" if interval.low_closed else "("
    hi = "]" if interval.high_closed else ")"
    return (
        f"`{name}` must be in {lo}{_fmt(interval.low)}, {_fmt(interval.high)}{hi}. Received: {name}={value!r}"
    )


def clipping_message(given: dict) -> str:
    names = ", ".join(f"`{k}`" for k in CLIPPING)
    received = ", ".join(f"{k}={given.get(k)}" for k in CLIPPING)
    return f"Only one of {names} can be set. Received: {received}"


# --------------------------------------------------------------------------------------
# pytest parameters: (rule, name, value) or (rule, name) over the whole registry


def _declaration(h) -> tuple:
    """What decides a hyperparameter's run-time check: its name (in the message), kind, range and
    option-ness. Keras's options are declared alike in every rule."""
    return (h.name, h.kind, str(h.interval), h.optional, h.zero_is_off)


def _cases(values_of) -> list:
    """Each bad (or boundary) value once per declaration, and one per rule and hyperparameter: the shared
    runtime checks are tested once per kind of declaration, and every generated signature is tested to
    call the check of each of its arguments (not every rule x option x bad value)."""
    out, seen = [], set()
    for r in RULES:
        for name, h in r.hypers.items():
            if h.kind in ("bool", "choice"):  # a flag's and a choice's checks: BOOL, CHOICE
                continue
            values = values_of(h)
            if _declaration(h) in seen:
                values = values[:1]
            seen.add(_declaration(h))
            out += [pytest.param(r, name, v, id=f"{r.name}-{name}={v!r}") for v in values]
    return out


BAD_RANGE = _cases(out_of_range)
GOOD_ENDS = _cases(closed_ends)
WRONG_TYPE = _cases(wrong_types)
BOOL = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind == "bool"
]
CHOICE = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if h.kind == "choice"
]
OPTIONS = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if is_option(h)
]
ZERO_IS_OFF = [
    pytest.param(r, name, id=f"{r.name}-{name}")
    for r in RULES
    for name, h in r.hypers.items()
    if is_option(h) and h.zero_is_off
]
_COMBOS = [*itertools.combinations(CLIPPING, 2), CLIPPING]
CLIPPING_PAIRS = [  # every combination for the first rule (the shared check), one for each other
    pytest.param(r, combo, id=f"{r.name}-{'+'.join(combo)}")
    for i, r in enumerate(RULES)
    for combo in (_COMBOS if i == 0 else _COMBOS[i % len(_COMBOS) : i % len(_COMBOS) + 1])
]


def clipping_unseen(rule, name: str) -> str:
    """Why the clipping option ``name`` given a value cannot be seen in ``rule``'s parameters or state, or
    "": the rule's steps, run in NumPy with every gradient scaled down by 1e-3 (``clipnorm``,
    ``global_clipnorm``) or clipped element-wise by hand (``clipvalue``), equal its steps on the gradients
    as they are (to 1e-12: a sign, ``sign(g)``; a direction, ``||w|| g / ||g||``). For any other option or
    rule, "": the option must act."""
    import numpy as np
    from drivers import problem, run

    if name not in CLIPPING:
        return ""
    params0, grads = problem(4, seed=41)
    if name == "clipvalue":
        changed = [[np.asarray(np.clip(x, -1e-3, 1e-3)) for x in g] for g in grads]
    else:
        changed = [[np.asarray(x * 1e-3) for x in g] for g in grads]
    cfg = dict(rule.configs["default"])
    (want, _), (got, _) = run("numpy", rule, cfg, params0, grads), run("numpy", rule, cfg, params0, changed)
    if all(np.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(got, want)):
        how = "clipped element-wise" if name == "clipvalue" else "scaled down"
        return f"{rule.name} steps the same with every gradient {how} by hand: {name} cannot be seen in its steps"
    return ""
