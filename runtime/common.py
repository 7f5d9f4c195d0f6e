"""Checks of constructor arguments, with Keras's message form.

"`beta_1` must be in [0, 1). Received: beta_1=1.5"
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Interval:
    """A range of valid values, such as ``[0, 1)`` (the rules declare their hyperparameters' so)."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        m = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])\s*", text)
        if not m:
            raise ValueError(f"a range is written like '[0, 1)' or '(0, inf)'; received {text!r}")
        return cls(_number(m.group(2)), _number(m.group(3)), m.group(1) == "[", m.group(4) == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        lo = "[" if self.low_closed else "("
        hi = "]" if self.high_closed else ")"
        return f"{lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"


def _number(text: str) -> float:
    text = text.strip().lower()
    if text in ("inf", "+inf", "infinity"):
        return math.inf
    if text in ("-inf", "-infinity"):
        return -math.inf
    return float(text)


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _interval(low: float, high: float, low_closed: bool, high_closed: bool) -> str:
    return str(Interval(low, high, low_closed, high_closed))


@dataclasses.dataclass(frozen=True)
class Check:
    """How a hyperparameter is checked, as its rule declares it, for a module that keeps its checks as a
    table (torch's, whose parameter groups are checked again when changed). ``kind``: "float" (a number
    in ``interval``), "option" (None, or a number in ``interval``; an int where ``integer``; 0 is None
    where ``zero_is_off``), "flag" (a bool), "choice" (one of ``choices``) or "learning_rate" (in [0, inf),
    or a callable schedule)."""

    kind: str
    interval: str | None = None
    integer: bool = False
    zero_is_off: bool = False
    choices: tuple[str | None, ...] = ()  # a "choice": the strings it may be (None may be one)

    @functools.cached_property
    def _bounds(self) -> tuple[float, float, bool, bool]:
        i = Interval.parse(self.interval or "(-inf, inf)")
        return i.low, i.high, i.low_closed, i.high_closed

    def __call__(self, name: str, value: Any, *, arrays: bool = False, static: bool = False) -> Any:
        """``value``, checked (and made a float, an int or None as its kind is); ``name`` goes into the
        message; ``arrays``, ``static``: a real number's, as ``check_float`` takes them."""
        if self.kind == "flag":
            return check_flag(name, value)
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if self.kind == "learning_rate":
            return check_learning_rate(value, schedule=True, name=name, arrays=arrays)
        if self.kind == "option":
            return check_option(
                name,
                value,
                *self._bounds,
                integer=self.integer,
                zero_is_off=self.zero_is_off,
                arrays=arrays,
                static=static,
            )
        if self.kind == "float":
            return check_float(name, value, *self._bounds, arrays=arrays, static=static)
        raise ValueError(
            f"a check's kind is 'float', 'option', 'flag', 'choice' or 'learning_rate'; received {self.kind!r}"
        )


def check_float(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_closed: bool,
    high_closed: bool,
    *,
    arrays: bool = False,
    static: bool = False,
) -> Any:
    """A real hyperparameter: a Python or NumPy real number (not a bool) inside its range; where ``arrays``,
    also a 0-d float array, returned as it is (``optax.inject_hyperparams`` passes the hyperparameters as
    arrays, traced under jit: a traced one's range cannot be checked). ``static``: its value decides which
    computation runs (JAX), so an array is refused, saying what to do instead."""
    if arrays and _scalar_array(value):
        try:
            number = float(value)
        except Exception:  # noqa: BLE001 - jax raises its own error types for tracers
            return value
        check_float(name, number, low, high, low_closed, high_closed)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = (
            " (its value decides which computation the update runs, so it cannot be an array: with"
            " optax.inject_hyperparams, name it in static_args)"
            if static and _scalar_array(value)
            else ""
        )
        raise TypeError(
            f"`{name}` must be a float{hint}. Received: {name}={value!r} of type {type(value).__name__}"
        )
    number = float(value)
    above = number >= low if low_closed else number > low
    below = number <= high if high_closed else number < high
    if not (above and below) or math.isnan(number):
        raise ValueError(
            f"`{name}` must be in {_interval(low, high, low_closed, high_closed)}. Received: {name}={value}"
        )
    return number


def named(name: str, value: Any, alias: str, alias_value: Any) -> tuple[str, Any]:
    """An argument that has two names (optax's ``b1``, the rule's ``beta_1``): the alias and its value where
    it is given (not None), else the name and its value; the name goes into the check's message."""
    return (name, value) if alias_value is None else (alias, alias_value)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r} of type {type(value).__name__}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str | None, ...]) -> str | None:
    """A hyperparameter that is one of a few strings (optax's polyak_sgd ``variant``; None where it is one
    of them: torch's Muon's ``adjust_lr_fn``)."""
    if value is None and None in choices:
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}. Received: {name}={value!r} of type"
            f" {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}. Received: {name}={value!r}"
        )
    return value


def _scalar_array(value: Any) -> bool:
    """A 0-d floating array of a framework (a jax.Array, possibly traced, a torch or NumPy 0-d array)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return shape is not None and tuple(shape) == () and "float" in str(dtype)


def check_learning_rate(
    value: Any, *, schedule: bool, name: str = "learning_rate", arrays: bool = False
) -> Any:
    """A learning rate in [0, inf); where ``schedule``, a callable ``step -> lr``; where ``arrays``, a 0-d
    float array (as ``optax.inject_hyperparams`` passes; its range cannot be checked when it is traced)."""
    if schedule and callable(value):
        return value
    if arrays and _scalar_array(value):
        try:
            number = float(value)  # a concrete array: check its range; a traced one cannot be checked
        except Exception:  # noqa: BLE001 - jax raises its own error types for tracers
            return value
        check_float(name, number, 0.0, math.inf, True, False)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kinds = "a float or a callable schedule `step -> lr`" if schedule else "a float"
        raise TypeError(
            f"`{name}` must be {kinds}. Received: {name}={value!r} of type {type(value).__name__}"
        )
    return check_float(name, value, 0.0, math.inf, True, False)


def check_option(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_closed: bool,
    high_closed: bool,
    *,
    integer: bool = False,
    zero_is_off: bool = False,
    arrays: bool = False,
    static: bool = False,
) -> Any:
    """An optional hyperparameter: None (off), or a number in range; ``zero_is_off`` maps 0 to None; where
    ``arrays`` (a float option), a 0-d float array as ``check_float`` takes it (not 0 then: whether the
    option is on is decided when the optimizer is made)."""
    if value is None:
        return None
    if arrays and not integer and _scalar_array(value):
        return check_float(name, value, low, high, low_closed, high_closed, arrays=True)
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            hint = (
                " (a count of steps is a Python int, not an array: with optax.inject_hyperparams, name it"
                " in static_args)"
                if getattr(value, "shape", None) == ()
                else ""
            )
            raise TypeError(
                f"`{name}` must be an int or None{hint}. Received: {name}={value!r} of type"
                f" {type(value).__name__}"
            )
        if zero_is_off and value == 0:
            return None
        check_float(name, value, low, high, low_closed, high_closed)
        return int(value)
    if zero_is_off and not isinstance(value, bool) and isinstance(value, numbers.Real) and value == 0:
        return None
    return check_float(name, value, low, high, low_closed, high_closed, static=static)


def check_exclusive(**values: Any) -> None:
    """At most one of the given options may be set (Keras: one clipping option)."""
    given = [k for k, v in values.items() if v is not None]
    if len(given) > 1:
        names = ", ".join(f"`{k}`" for k in values)
        received = ", ".join(f"{k}={v}" for k, v in values.items())
        raise ValueError(f"Only one of {names} can be set. Received: {received}")


def learning_rate_at(learning_rate: Any, n: Any) -> Any:
    """The learning rate of the step after ``n`` earlier calls: a value, ``schedule(n)``, or ``callable()``."""
    if not callable(learning_rate):
        return learning_rate
    value = learning_rate() if _takes_no_arguments(learning_rate) else learning_rate(n)
    shape = tuple(getattr(value, "shape", ()))
    if shape not in ((), (1,)) or isinstance(value, (list, tuple)):
        raise ValueError(
            f"the learning-rate schedule must return a scalar. Received: a value of shape {shape or len(value)} at step {n}"
        )
    # one element is its scalar: a 0-d parameter stays 0-d (broadcasting would make it (1,))
    if shape == (1,):
        value = value.reshape(())
        if type(value).__module__ == "numpy":
            value = value[()]  # a NumPy scalar, which torch's and NumPy's operations take as a number
    return value


def _takes_no_arguments(fn: Any) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        and p.default is p.empty
        or p.kind is p.VAR_POSITIONAL
        for p in params
    )


def scratch_views(cache: dict, place: tuple, count: int, size: int, shape: Any, new: Any, view: Any) -> tuple:
    """``count`` buffers of ``size`` elements shaped ``shape``: views of one buffer per ``place`` (a dtype,
    and a device), kept in ``cache`` and grown to the largest need, so that a step allocates nothing in
    proportion to the parameters. ``new(n)`` makes a flat buffer, ``view(flat, shape)`` shapes a slice."""
    key = (place, shape, count)
    views = cache.get(key)
    if views is None:
        buffer, capacity = cache.get(("buffer", place), (None, 0))
        if buffer is None or capacity < count * size:
            buffer, capacity = new(count * size), count * size
            for old in [k for k in cache if k[0] == place]:
                del cache[old]  # views of the buffer replaced
            cache[("buffer", place)] = buffer, capacity
        views = tuple(view(buffer[i * size : (i + 1) * size], shape) for i in range(count))
        cache[key] = views
    return views


class PerTensor(str):
    """The scope of a state kept for some tensors only (``"element"``, a row's...), with the test of a
    tensor's shape that says which (``test(shape)``; ``text``: the test as the rule reads, for messages):
    torch's Muon keeps AdamW's second moment for the tensors that are not matrices. Elsewhere an empty array
    stands in for it (``state_shape``: ``(0,)``), which the step never reads. It is the scope's string
    itself for everything else (``scope == "element"``)."""

    test: Callable[..., bool]
    text: str
    #: the hyperparameters the test reads besides the shape (``test(shape, **hypers)``): optax's Adafactor
    #: keeps its full moment for the tensors it does not factor (``factored``, ``min_dim_size_to_factor``)
    hypers: tuple[str, ...]

    def __new__(cls, scope: str, test: Callable[..., bool], text: str, hypers: tuple = ()) -> PerTensor:
        self = super().__new__(cls, scope)
        self.test, self.text, self.hypers = test, text, tuple(hypers)
        return self

    def bind(self, **hypers: Any) -> PerTensor:
        """The scope for an optimizer's hyperparameters (its test reads only the shape then)."""
        return PerTensor(str(self), functools.partial(self.test, **hypers), self.text)


def kept(shape: Any, scope: str, hypers: Any = None) -> bool:
    """Whether a parameter of ``shape`` keeps a state of ``scope`` (a :class:`PerTensor` scope: where its
    test holds, given ``hypers``, a mapping, for one that reads some; any other: always)."""
    if not isinstance(scope, PerTensor):
        return True
    return bool(scope.test(tuple(shape), **{h: hypers[h] for h in scope.hypers}))


def rank(shape: tuple) -> int:
    """The number of axes of a tensor of ``shape`` (the rules' ``rank``)."""
    return len(shape)


def rows(shape: tuple) -> int:
    """The length of the axis before the last (the rules' ``rows``; 1 below rank 2)."""
    return shape[-2] if len(shape) >= 2 else 1


def cols(shape: tuple) -> int:
    """The length of the last axis (the rules' ``cols``; 1 for a 0-d tensor)."""
    return shape[-1] if shape else 1


def size(shape: tuple) -> int:
    """The number of elements of a tensor of ``shape`` (the rules' ``size``)."""
    return math.prod(shape)


def axis_by_size(shape: Any, k: int) -> int:
    """The axis (negative, counted from the last) of ``shape`` that is the ``k``-th longest (1: the longest),
    in ``numpy.argsort``'s order, as optax's Adafactor chooses it (ties: the later axis is the longer); an
    axis the shape does not have where it has fewer than ``k`` axes (-1 for a 0-d shape's longest, -2 for a
    vector's second longest: a reduction over it leaves the values as they are)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < k:
        return -k
    order = sorted(range(len(shape)), key=shape.__getitem__)  # a stable order: numpy's below rank 4
    top = sorted(shape)[-2:]
    if len(shape) >= 4 and any(shape.count(n) > 1 for n in top):
        # equal lengths among the two longest: numpy's order of them differs from a stable sort from rank 4
        # (a vectorised sort, machine-dependent), and optax's is numpy's. A torch step that torch.compile
        # traces breaks its graph here (rank 4 and more, with such ties only)
        import numpy as np

        order = [int(i) for i in np.argsort(np.asarray(shape, dtype=np.int64))]
    return order[-k] - len(shape)


def largest_length(shape: Any) -> int:
    """The length of the longest axis of ``shape`` (1 for a 0-d shape)."""
    return max(tuple(shape), default=1)


def second_largest_length(shape: Any) -> int:
    """The length of the second longest axis of ``shape`` (1 below rank 2)."""
    shape = sorted(tuple(shape))
    return shape[-2] if len(shape) >= 2 else 1


def scope_words(scope: str, shape: Any) -> str:
    """A state's scope in an error message: ``element state``, or for one that only some tensors keep, which
    and that a parameter of ``shape`` is not one of them (a state made by an optforge before that)."""
    if isinstance(scope, PerTensor) and not kept(shape, scope):
        return (
            f"{str(scope)} state, kept only for the tensors where {scope.text}: for this parameter an empty"
            " array (a state saved when every tensor kept one resumes with it replaced by an empty array)"
        )
    return f"{str(scope)} state"


def state_shape(shape: Any, scope: str) -> tuple:
    """The shape of a parameter's state: ``"element"`` the parameter's, ``"tensor"`` 0-d, and
    ``"element/-1"`` (``"element/-2/-1"``...) the parameter's with those axes reduced to length 1, an axis
    the parameter does not have left out (a vector's -2): a row or a column of Adafactor's moments. A state
    a parameter does not keep (:class:`PerTensor`) is empty: ``(0,)``."""
    if not kept(shape, scope):
        return (0,)
    if scope == "tensor":
        return ()
    kind, *axes = scope.split("/")
    if kind != "element":
        raise ValueError(f"a state's scope is 'element', 'tensor' or 'element/<axes>'. Received: {scope!r}")
    if axes == ["cover"]:  # SM3's cover: one vector per axis, laid end to end (a 0-d tensor: one value)
        return (cover_length(shape),)
    if len(axes) == 1 and not axes[0].startswith("-") and axes[0] not in _BY_SIZE:  # a matrix product's
        return matrix_shape(shape, axes[0])
    out = list(shape)
    for token in axes:  # -1, -2...; or the axis a shape's lengths choose: largest, second_largest
        axis = int(token) if token.startswith("-") else axis_by_size(shape, _BY_SIZE[token])
        if -axis <= len(out):
            out[axis] = 1
    return tuple(out)


_BY_SIZE = {"largest": 1, "second_largest": 2}


def cover_length(shape: Any) -> int:
    """The values of a cover of a tensor of ``shape`` by its slices (``cover_max``): one per index of each
    axis, ``m + n`` for an ``m x n`` matrix; one for a 0-d tensor (covered by itself)."""
    return sum(shape) if len(shape) else 1


def cover_slices(shape: Any) -> list[tuple[int, int, tuple[int, ...]]]:
    """Where each axis's vector lies in a cover of a tensor of ``shape`` (``cover_max``): (start, stop,
    shape broadcasting against the tensor: ``(1, n, 1)`` for axis 1 of a rank-3 tensor), in axis order; a
    0-d tensor's one value, shaped ``()``. A tensor with no elements (``(0, 3)``) has slices that hold none
    (its second axis's 3): their maximum is 0 in every backend (optax stores -inf; no element reads it,
    and a state stays finite)."""
    shape = tuple(shape)
    if not shape:
        return [(0, 1, ())]
    out, start = [], 0
    for r, d in enumerate(shape):
        out.append((start, start + d, (1,) * r + (d,) + (1,) * (len(shape) - r - 1)))
        start += d
    return out


def matrix_shape(shape: Any, pair: str) -> tuple:
    """The shape of a value a matrix operation makes from a parameter of ``shape`` viewed as an ``m x n``
    matrix (its last two axes; leading axes are batch axes; below rank 2 it is ``1 x n``, ``1 x 1``):
    ``pair`` names the last two axes with ``m``, ``n`` or ``1`` (``"mm"``: ``X @ X^T``, ``"nm"``: ``X^T``)."""
    shape = tuple(shape)
    sizes = {"m": shape[-2] if len(shape) >= 2 else 1, "n": shape[-1] if shape else 1, "1": 1}
    if len(pair) != 2 or any(d not in sizes for d in pair):
        raise ValueError(f"a matrix shape is two of 'm', 'n', '1' ('mm', 'nm'). Received: {pair!r}")
    return shape[:-2] + tuple(sizes[d] for d in pair)


def float32(x: Any) -> float:
    """``x`` (a number, or a 0-d array) rounded to the nearest float32 (ties to even), a Python float: the
    rules' ``float32(x)`` on once-per-step values. Arithmetic only (no NumPy: every runtime uses it): Dekker's
    split at 24 bits (exact rounding to nearest even in float32's normal range); below it, the subnormals'
    quantum 2**-149; beyond float32's largest value (and the half unit above it), infinite. Not under
    torch.compile, whose symbolic floats simplify ``c - (c - x)`` to ``x`` (torch_support.float32)."""
    x = float(x)  # in float64 (a float32 0-d array would split in float32: wrong)
    if abs(x) >= _FLOAT32_OVERFLOW:
        return x * math.inf
    if abs(x) < _FLOAT32_TINY:
        r = (x + _SUBNORMAL_SHIFT) - _SUBNORMAL_SHIFT
        return r if r != 0 else x * 0.0  # a zero keeps x's sign
    c = x * _SPLIT
    return c - (c - x)


_SPLIT = (
    2.0**29 + 1
)  # Dekker: x*(2**29 + 1) - (x*(2**29 + 1) - x) keeps 53 - 29 = 24 bits, rounded to nearest
_FLOAT32_OVERFLOW = 3.4028235677973366e38  # float32's largest value plus half its unit: rounds to infinity
_FLOAT32_TINY = 2.0**-126  # float32's smallest normal value
_SUBNORMAL_SHIFT = 1.5 * 2.0**-97  # a float64 whose unit is 2**-149: adding it rounds to that quantum


def loss_value(value: Any, rule: str, how: str = "value=<the loss at the current parameters>") -> Any:
    """The objective's value given to the step of a rule that reads it (``loss``: Polyak's step size), or
    an error that says how to give it (``how``: the framework's way)."""
    if value is None:
        raise TypeError(f"{rule} reads the objective's value at this step: pass {how}")
    return value
