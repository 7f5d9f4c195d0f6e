"""Keras 3's shared options as stages around a rule, the part every framework shares (pure Python).

The rule transform ``rules/_keras_options.py`` states the options' equations (the docs and docstrings
print them, and the fused kernels compile them in); the plain paths run the rule's own program and these
stages around it, written once per framework: ``options_numpy.py``, ``options_torch.py``, ``options_jax.py``.
For one call of the step (REFERENCE_RULES.md sections 2.1-2.2):

1. the prologue, per tensor: the gradient divided by ``loss_scale_factor``; with
   ``gradient_accumulation_steps = N`` added to the accumulator, and on the N-th call replaced by the
   accumulator's mean (the accumulator then reset); on an update, clipped (``clipnorm`` per tensor,
   ``global_clipnorm`` over all tensors, or ``clipvalue``), then the decoupled ``weight_decay``;
2. the rule, on update calls only, with its step ``t`` counting updates (a learning-rate schedule sees the
   calls);
3. the epilogue, per tensor, on every call: the EMA of the weights and its overwrite.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from . import common

#: how each option is checked, in the order the rule transform declares them, as it declares them (a test
#: holds the two together): the generated NumPy and JAX constructors call ``check``, the torch optimizers
#: add these to their rule's own checks of a parameter group
CHECKS = {
    "weight_decay": common.Check("option", "[0, inf)"),
    "clipnorm": common.Check("option", "[0, inf)", zero_is_off=True),
    "clipvalue": common.Check("option", "[0, inf)", zero_is_off=True),
    "global_clipnorm": common.Check("option", "[0, inf)", zero_is_off=True),
    "use_ema": common.Check("flag"),
    "ema_momentum": common.Check("float", "[0, 1]"),
    "ema_overwrite_frequency": common.Check("option", "[0, inf)", integer=True, zero_is_off=True),
    "loss_scale_factor": common.Check("option", "(0, inf)"),
    "gradient_accumulation_steps": common.Check("option", "[2, inf)", integer=True),
}
#: the options
KERAS_OPTIONS = tuple(CHECKS)
#: the options for which 0 means off, as None does
ZERO_IS_OFF = frozenset(name for name, check in CHECKS.items() if check.zero_is_off)
#: the options of which at most one may be given
EXCLUSIVE = (("clipnorm", "clipvalue", "global_clipnorm"),)


def check(name: str, value: Any, *, arrays: bool = False, static: bool = False) -> Any:
    """Option ``name``'s value checked as ``CHECKS`` says (the generated NumPy and JAX constructors'):
    ``arrays``, ``static`` as ``common.check_float`` takes them (JAX: a 0-d array, a value that decides
    which computation runs)."""
    return CHECKS[name](name, value, arrays=arrays, static=static)


#: the once-per-step values the stages give the fused kernels, besides the options and the learning rate
STAGE_VALUES = ("is_update", "t", "ema_mu", "ema_overwrite", "global_sumsq_g")


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of one optimizer (or torch parameter group); those it does not take are off."""

    weight_decay: float | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: int | None = None
    loss_scale_factor: float | None = None
    gradient_accumulation_steps: int | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any] | Any, names: tuple[str, ...]) -> Options:
        """The options named ``names`` (those the optimizer takes) from a mapping (a torch parameter group)
        or the attributes of an object (a NumPy optimizer)."""
        get = values.__getitem__ if isinstance(values, Mapping) else values.__getattribute__
        found = {}
        for name in names:
            value = get(name)
            found[name] = (value or None) if name in ZERO_IS_OFF else value
        return cls(**found)

    @property
    def touches_gradient(self) -> bool:
        """Whether the prologue changes the gradient (else the rule reads it as it came)."""
        return (
            self.loss_scale_factor is not None
            or self.gradient_accumulation_steps is not None
            or self.clipnorm is not None
            or self.global_clipnorm is not None
            or self.clipvalue is not None
        )


@dataclasses.dataclass(frozen=True)
class Step:
    """What one call of the step is: ``n`` calls before it, ``updates`` updates before it (the rule's own
    ``n``), the rule's ``t`` (updates, not calls), whether it updates, the EMA's momentum and whether the
    weights are replaced by their EMA after it."""

    n: int
    updates: int
    t: int
    is_update: bool
    ema_mu: float
    overwrite: bool

    @classmethod
    def of(cls, n: int, o: Options) -> Step:
        steps = o.gradient_accumulation_steps
        updates = n // steps if steps is not None else n
        t = updates + 1  # the step counts updates, not calls
        is_update = steps is None or (n + 1) % steps == 0
        ema_mu = 0 if t == 1 else o.ema_momentum  # EMA momentum (0 at the first update)
        frequency = o.ema_overwrite_frequency
        overwrite = frequency is not None and o.use_ema and t % frequency == 0
        return cls(n, updates, t, is_update, ema_mu, overwrite)


def kernel_values(
    names: tuple[str, ...],
    rule: Mapping[str, Any],
    o: Options,
    step: Step,
    lr: Any,
    global_sumsq_g: Any,
) -> dict[str, Any]:
    """The once-per-step values a fused kernel takes (``names``, its ``prepare``'s arguments): the rule's
    (``rule``), then the options' and the stages'. On a call that does not update, the rule has not run:
    its values are 0 where ``rule`` lacks them (the kernel reads them only on updates)."""
    given = {
        **dataclasses.asdict(o),
        "lr": lr,
        "is_update": step.is_update,
        "t": step.t,
        "ema_mu": step.ema_mu,
        # an update after which the EMA replaces the weights (with use_ema: the kernels test both)
        "ema_overwrite": o.ema_overwrite_frequency is not None and step.t % o.ema_overwrite_frequency == 0,
        "global_sumsq_g": global_sumsq_g,
    }
    return {k: rule[k] if k in rule else given.get(k, 0) for k in names}
