"""The implementations timed for a rule: ours (each backend, with and without the fused path) and the references.

An implementation is a :class:`Candidate`; ``candidate.make(workload)`` returns a :class:`Runner` holding its
own copy of the workload, whose ``step()`` performs one complete optimizer step (for JAX: until the results
are ready). ``make`` raises :class:`Unsupported` where the implementation does not exist in this build.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from optforge.compiler.dsl import Rule

from .configs import LEARNING_RATE, Reference, RuleConfig
from .workload import Workload

OURS = "ours"
REFERENCE = "reference"

#: torch.optim's modes: constructor options
TORCH_MODES = {
    "for-loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
}


class Unsupported(Exception):
    """This implementation does not exist here (e.g. no fused kernel); the row is reported as skipped."""


class Runner(Protocol):
    def step(self) -> None:
        """One optimizer step, finished when it returns."""

    def values(self) -> list[np.ndarray]:
        """The current parameters, as NumPy arrays."""


@dataclass(frozen=True)
class Candidate:
    """One implementation of a rule."""

    rule: str
    name: str  # e.g. "numpy fused", "torch.optim foreach"
    kind: str  # OURS or REFERENCE
    framework: str  # "numpy", "torch" or "jax"
    make: Callable[[Workload], Runner]
    reference: Reference | None = None  # what a reference is to ours (None for ours)

    @property
    def note(self) -> str:
        return "" if self.reference is None else self.reference.note


class NumpyRunner:
    """Our NumPy optimizer: ``params, state = opt.step(params, grads, state)`` (in place; ``value=`` the
    objective's value where the rule reads it)."""

    def __init__(self, opt: Any, workload: Workload, value: float | None = None) -> None:
        self.opt = opt
        self.params = workload.fresh_params()
        self.grads = workload.fresh_grads()
        self.state = opt.init(self.params)
        self.kwargs = {} if value is None else {"value": value}

    def step(self) -> None:
        self.params, self.state = self.opt.step(self.params, self.grads, self.state, **self.kwargs)

    def values(self) -> list[np.ndarray]:
        return [np.array(p) for p in self.params]


class TorchRunner:
    """A ``torch.optim.Optimizer`` (ours or torch's) over CPU tensors whose ``.grad`` is fixed."""

    def __init__(
        self, make_optimizer: Callable[[list], Any], workload: Workload, value: float | None = None
    ) -> None:
        import torch

        self.params = [torch.nn.Parameter(torch.from_numpy(p)) for p in workload.fresh_params()]
        for p, g in zip(self.params, workload.fresh_grads()):
            p.grad = torch.from_numpy(g)
        self.opt = make_optimizer(self.params)
        self.kwargs = {} if value is None else {"value": value}

    def step(self) -> None:
        self.opt.step(**self.kwargs)

    def values(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]


class JaxRunner:
    """An optax ``GradientTransformation`` (ours or optax's), stepped as optax users do: one jitted
    ``step(params, state, grads)`` doing ``update`` and ``optax.apply_updates``, params and state donated."""

    def __init__(self, tx: Any, workload: Workload, value: float | None = None) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        kwargs = {} if value is None else {"value": value}

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params, **kwargs)
            return optax.apply_updates(params, updates), state

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._block = jax.block_until_ready
        self.params = [jnp.asarray(p) for p in workload.fresh_params()]
        self.grads = [jnp.asarray(g) for g in workload.fresh_grads()]
        self.state = tx.init(self.params)

    def step(self) -> None:
        self.params, self.state = self._block(self._step(self.params, self.state, self.grads))

    def values(self) -> list[np.ndarray]:
        return [np.array(p) for p in self.params]


def _fused_option(cls: Any, fused: bool) -> dict[str, bool]:
    """``{"fused": fused}`` where the constructor has the option; without it, the plain path or Unsupported."""
    if fused and getattr(cls, "kernels_refused", ""):
        raise Unsupported(f"{cls.__qualname__} has no kernels: {cls.kernels_refused}")
    if "fused" in inspect.signature(cls).parameters:
        return {"fused": fused}
    if fused:
        raise Unsupported(f"{cls.__qualname__} has no `fused` option in this build")
    return {}


def objective(rule: Rule) -> float | None:
    """The objective's value each step is given where the rule reads it (Polyak's step size): a fixed
    number (the step's work does not depend on it), the same for the reference; else None."""
    return 1.0 if rule.reads_loss else None


def ours(rule: Rule, config: RuleConfig) -> list[Candidate]:
    """Our generated modules: NumPy and torch without and with the fused path, JAX."""

    def numpy(fused: bool) -> Callable[[Workload], Runner]:
        def make(workload: Workload) -> Runner:
            import optforge.generated.numpy as gnp

            cls = getattr(gnp, rule.name)
            opt = cls(learning_rate=LEARNING_RATE, **config.hypers, **_fused_option(cls, fused))
            return NumpyRunner(opt, workload, objective(rule))

        return make

    def torch(fused: bool) -> Callable[[Workload], Runner]:
        def make(workload: Workload) -> Runner:
            import optforge.generated.torch as gt

            cls = getattr(gt, rule.name)
            option = _fused_option(cls, fused)
            return TorchRunner(
                lambda params: cls(params, lr=LEARNING_RATE, **config.hypers, **option),
                workload,
                objective(rule),
            )

        return make

    def jax(workload: Workload) -> Runner:
        import optforge.generated.jax as gj

        tx = getattr(gj, rule.module)(learning_rate=LEARNING_RATE, **config.hypers)
        return JaxRunner(tx, workload, objective(rule))

    return [
        Candidate(rule.name, "numpy", OURS, "numpy", numpy(False)),
        Candidate(rule.name, "numpy fused", OURS, "numpy", numpy(True)),
        Candidate(rule.name, "torch", OURS, "torch", torch(False)),
        Candidate(rule.name, "torch fused", OURS, "torch", torch(True)),
        Candidate(rule.name, "jax", OURS, "jax", jax),
    ]


def torch_default_mode() -> str:
    """The mode torch.optim picks on CPU when neither ``foreach`` nor ``fused`` is given."""
    import torch
    from torch.optim.optimizer import _default_to_fused_or_foreach

    fused, foreach = _default_to_fused_or_foreach([torch.zeros(1)], differentiable=False, use_fused=False)
    return "fused" if fused else "foreach" if foreach else "for-loop"


def _torch_reference(reference: Reference, mode: dict[str, bool]) -> Callable[[Workload], Runner]:
    def make(workload: Workload) -> Runner:
        def build(params):
            try:
                return reference.make(params, **mode)
            except TypeError as e:  # no such keyword: torch has no fused kernel for this optimizer
                if "fused" in mode and "fused" in str(e):
                    raise Unsupported("torch.optim has no fused kernel for it") from e
                raise
            except RuntimeError as e:  # the kernel exists, not for this device or dtype
                raise Unsupported(f"torch.optim refuses it: {e}") from e

        return TorchRunner(build, workload)

    return make


def _optax_reference(reference: Reference, value: float | None = None) -> Callable[[Workload], Runner]:
    return lambda workload: JaxRunner(reference.make(), workload, value)


def references(rule: Rule, config: RuleConfig) -> list[Candidate]:
    """torch.optim in each mode (torch's CPU default marked) and optax under jax.jit with donation."""
    out = []
    if config.torch is not None:
        default = torch_default_mode()
        for mode, options in TORCH_MODES.items():
            name = f"torch.optim {mode}" + (" (default)" if mode == default else "")
            make = _torch_reference(config.torch, options)
            out.append(Candidate(rule.name, name, REFERENCE, "torch", make, config.torch))
    if config.optax is not None:
        out.append(
            Candidate(
                rule.name,
                "optax",
                REFERENCE,
                "jax",
                _optax_reference(config.optax, objective(rule)),
                config.optax,
            )
        )
    return out


def candidates(rule: Rule, config: RuleConfig) -> list[Candidate]:
    """Every implementation benchmarked for ``rule``: ours, then the references."""
    return ours(rule, config) + references(rule, config)
