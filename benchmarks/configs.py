"""What each rule runs with, and the torch.optim / optax configurations it is compared with.

The mapping is the one ``tests/references.py`` tests for equality (REFERENCE_RULES.md section 4): a
reference marked ``equal`` computes our update up to float32 rounding; ``same algorithm`` means the
reference implements the same method with a documented difference (stated in its note).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

#: the learning rate of every rule (constant: the references equal ours only for a constant one)
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Reference:
    """A reference implementation of a rule: ``make(params, **mode)`` (torch.optim) or ``make()`` (optax)."""

    make: Callable[..., Any]
    equal: bool = (
        True  # computes our update up to float32 rounding; else the same method, differing as caveat says
    )
    caveat: str = ""

    @property
    def note(self) -> str:
        head = "equal" if self.equal else "same algorithm"
        return f"{head}: {self.caveat}" if self.caveat else head


@dataclass(frozen=True)
class RuleConfig:
    """Our hyperparameters for a rule (besides the learning rate) and its references."""

    hypers: dict[str, Any] = field(default_factory=dict)
    torch: Reference | None = None  # make(params, **mode) -> torch.optim.Optimizer
    optax: Reference | None = None  # make() -> optax.GradientTransformation
    note: str = ""


def _torch_sgd(params, **mode):
    import torch

    return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, **mode)


def _torch_adagrad(params, **mode):
    import torch

    return torch.optim.Adagrad(params, lr=LEARNING_RATE, initial_accumulator_value=0.1, eps=0.0, **mode)


def _torch_adamax(params, **mode):
    import torch

    return torch.optim.Adamax(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=0.0, **mode)


def _torch_nadam(params, **mode):
    import torch

    return torch.optim.NAdam(
        params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-7, momentum_decay=1.0, **mode
    )


def _optax(name: str, **kwargs) -> Callable[[], Any]:
    def make():
        import optax

        where = optax if hasattr(optax, name) else optax.contrib  # optax.contrib.muon
        return getattr(where, name)(LEARNING_RATE, **kwargs)

    return make


def _optax_polyak_sgd() -> Any:
    """optax.polyak_sgd with its ``scaling`` (the rule's learning rate) at the benchmark's rate."""
    import optax

    return optax.polyak_sgd(scaling=LEARNING_RATE)


class MuonWithAdamW:
    """torch.optim.Muon for the matrices (rank 2) and torch.optim.AdamW (``mode``: foreach, fused) for the
    other tensors, as torch's documentation pairs them: TorchMuon's reference (``rules/torch_muon.py``: one
    rule does both), one ``step()``, one ``lr`` for both (``param_groups``: the two optimizers' groups, which
    a schedule sets). ``bfloat16=False`` (the library tests' float64 comparison): Muon's Newton-Schulz
    iteration in the parameters' dtype, torch's cast to bfloat16 made an identity for the step, the code
    otherwise torch's own."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        adam_betas: tuple = (0.9, 0.999),
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.01,
        bfloat16: bool = True,
        **mode,
    ) -> None:
        import torch

        params = list(params)
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.optimizers = []
        if matrices:
            self.optimizers.append(
                torch.optim.Muon(
                    matrices,
                    lr=lr,
                    weight_decay=weight_decay,
                    momentum=momentum,
                    nesterov=nesterov,
                    eps=eps,
                    adjust_lr_fn=adjust_lr_fn,
                )
            )
        if others:
            self.optimizers.append(
                torch.optim.AdamW(
                    others, lr=lr, betas=adam_betas, eps=adam_eps, weight_decay=adam_weight_decay, **mode
                )
            )
        self.bfloat16 = bfloat16

    @property
    def param_groups(self) -> list:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        import contextlib
        from unittest import mock

        import torch

        cast = (
            contextlib.nullcontext()
            if self.bfloat16
            else mock.patch.object(torch.Tensor, "bfloat16", lambda x, *a, **k: x.clone())
        )
        with cast:
            for opt in self.optimizers:
                opt.step()


CONFIGS: dict[str, RuleConfig] = {
    # torch: a constant lr and no dampening make Keras's velocity -lr times torch's buffer
    "SGD": RuleConfig(
        hypers=dict(momentum=0.9),
        torch=Reference(_torch_sgd),
        optax=Reference(_optax("sgd", momentum=0.9)),
    ),
    # epsilon 0: Keras has it inside the root, torch outside; optax (inside) also needs the 0.1 start
    "Adagrad": RuleConfig(
        hypers=dict(initial_accumulator_value=0.1, epsilon=0.0),
        torch=Reference(_torch_adagrad),
        optax=Reference(_optax("adagrad", initial_accumulator_value=0.1, eps=0.0)),
    ),
    # epsilon 0: Keras adds it to u outside the max, torch and optax inside
    "Adamax": RuleConfig(
        hypers=dict(epsilon=0.0),
        torch=Reference(_torch_adamax),
        optax=Reference(_optax("adamax", b1=0.9, b2=0.999, eps=0.0)),
    ),
    # torch's 0.96^(t*momentum_decay) is Keras's 0.96^t with momentum_decay = 1
    "Nadam": RuleConfig(
        torch=Reference(_torch_nadam, caveat="torch rounds its momentum product to float32"),
        optax=Reference(
            _optax("nadam", b1=0.9, b2=0.999, eps=1e-7),
            equal=False,
            caveat="optax has no 0.96^t momentum schedule",
        ),
    ),
    "OptaxNovoGrad": RuleConfig(optax=Reference(_optax("novograd"))),
    "TorchMuon": RuleConfig(
        torch=Reference(
            functools.partial(MuonWithAdamW, lr=LEARNING_RATE),
            equal=False,
            caveat="torch.optim.Muon iterates in bfloat16 (1e-2 of the update apart), AdamW for the rest",
        )
    ),
    "OptaxPolyakSgd": RuleConfig(
        optax=Reference(
            _optax_polyak_sgd,
            caveat="optax's scaling is the rule's learning_rate; both given the objective's value 1.0 each step",
        )
    ),
    "NovoGrad": RuleConfig(note="no torch.optim or optax equivalent"),
    "NovoGradTF1": RuleConfig(note="no torch.optim or optax equivalent"),
}


def _library(rule_name: str, module: str) -> RuleConfig | None:
    """A rule named after its library (``Torch<Name>``: ``torch.optim.<Name>``; ``Optax<Name>``:
    ``optax.<name>``, its module less ``optax_``) on the defaults of both: the same update (the tests check
    it to 1e-12 in float64)."""
    if rule_name.startswith("Torch"):
        name = rule_name[len("Torch") :]

        def make(params, **mode):
            import torch

            return getattr(torch.optim, name)(params, lr=LEARNING_RATE, **mode)

        return RuleConfig(torch=Reference(make))
    if rule_name.startswith("Optax") and module.startswith("optax_"):
        return RuleConfig(optax=Reference(_optax(module[len("optax_") :])))
    return None


def config_for(rule) -> RuleConfig:
    """The configuration of ``rule`` (a registered rule); a rule named after its library has that library's
    optimizer as its reference; another rule added since has its defaults and no reference."""
    if rule.name in CONFIGS:
        return CONFIGS[rule.name]
    return _library(rule.name, rule.module) or RuleConfig(
        note="default hyperparameters, no reference configured"
    )
