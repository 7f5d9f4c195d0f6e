"""Keras 3's shared options as stages around a rule, for NumPy (``options.py`` says what they do).

``Call`` is one call of a generated optimizer's ``step``: the generated code makes it and runs the rule's
own code (``_update``) on update calls only; the rule's loop over the tensors is
``for key, w, g in call.tensors(case, values)``, which runs the prologue before it hands out each tensor
and the epilogue after the rule updated it. Every element-wise operation writes into scratch buffers kept
between steps (no allocation in proportion to the parameters); the operations, their order and their
dtype are those the options' equations printed inline did, so the results are the same bit for bit. With
``fused=True`` the tensors the kernels take go to them, options and all, after the others.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from . import common, fused_support, numpy_support
from .options import KERAS_OPTIONS, STAGE_VALUES, Options, Step, kernel_values
from .options import check as check  # the generated constructors check Keras's options with it


class Call:
    """One call of ``step`` (see the module docstring). ``optimizer``: the generated optimizer (its
    ``options``, ``keeps``, ``learning_rate``, ``_fused`` and ``_stage_scratch``); ``state``: its state
    before the call."""

    def __init__(
        self, optimizer: Any, keys: list, params: Any, grads: Any, state: Any, loss: Any = None
    ) -> None:
        self.optimizer = optimizer
        self.loss = loss  # the objective's value, where the rule reads it (``loss``)
        self.keys, self.params, self.grads, self.state = keys, params, grads, state
        self.options = o = Options.of(optimizer, optimizer.options)
        self.step = step = Step.of(state.step, o)
        self.lr = common.learning_rate_at(optimizer.learning_rate, state.step)
        self.element = tuple(n for n, scope in optimizer.keeps.items() if scope == "element")
        # a pass over all tensors: the global norm of the gradients as the prologue makes them
        self.global_sumsq_g: Any = 0.0
        if o.global_clipnorm is not None and step.is_update:
            self.global_sumsq_g = None  # being computed: the prologue stops before the global clipping
            total = 0.0
            for key in keys:
                w, g = params[key], numpy_support.upcast(grads[key])
                g = self.prologue(key, w, g, peek=True)
                _, _, s2 = self.scratch(w, g, self.get("grad_accumulator", key))
                np.square(g, out=s2)
                total = total + np.sum(s2)
            self.global_sumsq_g = total

    # -- what the rule reads -----------------------------------------------------------------

    @property
    def is_update(self) -> bool:
        return self.step.is_update

    @property
    def n(self) -> int:
        """The rule's ``n``: the updates before this one (``t = n + 1``)."""
        return self.step.updates

    def tensors(self, case: int, values: dict[str, Any]) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """Each tensor of the plain path (its key), the parameter, and its gradient as the prologue leaves
        it (a scratch buffer, or the gradient itself when no option changes it); after the rule has updated
        it, the epilogue. Then the tensors the fused path takes (``case``'s kernel, with the rule's
        once-per-step ``values``), in one kernel call."""
        opt = self.optimizer
        fused = opt._fused is not None
        kernel = fused_support.kernel(opt._fused, case) if fused else None
        names, scalars = fused_support.takes(kernel) if fused else ((), ())
        element = set(self.element)
        work = []
        for key in self.keys:
            w, g = self.params[key], numpy_support.upcast(self.grads[key])
            if fused:
                states = [self.get(name, key) for name in names]
                if fused_support.fusable(
                    w, g, *[s for s, name in zip(states, names) if name in element]
                ) and common.kept(
                    w.shape, kernel.takes, vars(opt)
                ):  # a tensor whose step the kernels compute
                    work.append((w, g, *states))
                    continue
            g = self.prologue(key, w, g)
            if self.step.is_update:
                yield key, w, g
            self.epilogue(key, w)
        if work:
            values = kernel_values(scalars, values, self.options, self.step, self.lr, self.global_sumsq_g)
            fused_support.run(kernel, work, values)

    def peek(self) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """Each tensor (the fused path's too), the parameter and its gradient as the prologue makes it, for a
        pass of the rule over all tensors before its update: nothing is written."""
        for key in self.keys:
            w = self.params[key]
            yield key, w, self.prologue(key, w, numpy_support.upcast(self.grads[key]), peek=True)

    def skip(self, case: int) -> None:
        """A call that only accumulates: the stages without the rule (its fused kernel: with the rule's
        hyperparameters, the rule's other values not read)."""
        skipped = set(KERAS_OPTIONS) | set(STAGE_VALUES) | {"lr"}
        rule = {k: v for k, v in vars(self.optimizer).items() if k not in skipped}
        for _ in self.tensors(case, rule):
            pass

    # -- the stages ----------------------------------------------------------------------------

    def get(self, name: str, key: Any) -> np.ndarray | None:
        """The state ``name`` of tensor ``key`` (None: not kept)."""
        slot = getattr(self.state, name)
        return None if slot is None else slot[key]

    def scratch(self, w: np.ndarray, *arrays: np.ndarray | None) -> tuple[np.ndarray, ...]:
        return numpy_support.scratch(self.optimizer._stage_scratch, 3, w, *arrays)

    def prologue(self, key: Any, w: np.ndarray, g: np.ndarray, peek: bool = False) -> np.ndarray:
        """The gradient the rule reads (``peek``: without touching the accumulator, for a pass over all
        tensors); on an update, the decoupled weight decay too (not when peeking)."""
        o, update = self.options, self.step.is_update
        if not o.touches_gradient and (peek or o.weight_decay is None or not update):
            return g
        acc = self.get("grad_accumulator", key)
        if peek:
            s0, s1, s2 = self.scratch(w, g, acc)
        else:
            s0, s1, s2 = self.scratch(w, g, *[self.get(name, key) for name in self.element])
        # loss scaling
        if o.loss_scale_factor is not None:
            g = np.divide(g, o.loss_scale_factor, out=s0)
        # gradient accumulation
        steps = o.gradient_accumulation_steps
        if steps is not None:
            if peek:
                acc = np.add(g, acc, out=s1)
            else:
                acc += g
            if update:
                g = np.divide(acc, steps, out=s0)
                if not peek:
                    acc[...] = 0
        if not update:
            return g
        # clipping
        if o.clipnorm is not None:
            c = o.clipnorm
            if peek:
                sumsq_g = np.sum(g**2)
            else:
                np.square(g, out=s1)
                sumsq_g = np.sum(s1)
            np.multiply(c, g, out=s2 if peek else s1)
            g = np.divide(s2 if peek else s1, np.maximum(c, np.sqrt(sumsq_g)), out=s0)
        if o.global_clipnorm is not None and self.global_sumsq_g is not None:
            c = o.global_clipnorm
            np.multiply(g, c, out=s1)
            g = np.divide(s1, np.maximum(c, np.sqrt(self.global_sumsq_g)), out=s0)
        if o.clipvalue is not None:
            g = np.clip(g, -o.clipvalue, o.clipvalue, out=s0)
        # decoupled weight decay
        if o.weight_decay is not None and not peek:
            np.multiply(self.lr, w, out=s1)
            np.multiply(s1, o.weight_decay, out=s1)
            w -= s1
        return g

    def epilogue(self, key: Any, w: np.ndarray) -> None:
        """The EMA of the weights, and its overwrite."""
        o = self.options
        if not o.use_ema:
            return
        ema, mu = self.get("ema", key), self.step.ema_mu
        _, s1, s2 = self.scratch(w, *[self.get(name, key) for name in self.element])
        np.multiply(ema, mu, out=s1)
        np.multiply(w, 1 - mu, out=s2)
        np.add(s1, s2, out=ema)
        if self.step.overwrite:
            w[...] = ema
