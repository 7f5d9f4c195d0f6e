"""Keras 3's shared options as stages around a rule, for JAX (``options.py`` says what they do).

``Call`` is one call of a generated ``update``: it turns the gradients into the ones the rule reads (the
prologue), runs the generated rule (a function of those gradients, the parameters and the rule's own
state) on update calls only, and adds the decoupled weight decay before the rule's increment and the EMA
of the weights after it (the epilogue). With gradient accumulation the call is an update or not at run
time where the step is traced (under ``jit``): one ``jax.lax.cond`` around the rule, so that a call that
only accumulates does not compute it; an eager call branches in Python. Everything is jit-compatible and works on any pytree; the operations are those the
options' equations printed inline did.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import common, jax_support
from .options import Options, check

__all__ = ["Call", "Options", "check"]


class Call:
    """One call of ``update``: ``grads`` (a pytree), the state's ``count`` and ``grad_accumulator``, and
    ``params`` (None where nothing reads them)."""

    def __init__(
        self, o: Options, learning_rate: Any, count: Any, grads: Any, acc: Any, params: Any, loss: Any = None
    ) -> None:
        self.loss = loss  # the objective's value, where the rule reads it (``loss``)
        self.options = o
        self.treedef = treedef = jax.tree.structure(grads)
        raw = treedef.flatten_up_to(grads)
        self.dtypes = [g.dtype for g in raw]
        self.ws = jax_support.leaves(treedef, params)
        steps = o.gradient_accumulation_steps
        self.lr = common.learning_rate_at(learning_rate, count)
        self.n = count // steps if steps is not None else count  # the rule's n: updates, not calls
        self.t = self.n + 1
        self.is_update = True if steps is None else (count + 1) % steps == 0  # traced with accumulation
        self.ema_mu = jnp.where(self.t == 1, 0, o.ema_momentum)
        gs = [jax_support.upcast(g) for g in raw]  # at least float32
        # loss scaling
        if o.loss_scale_factor is not None:
            gs = [g / o.loss_scale_factor for g in gs]
        # gradient accumulation: the accumulator's new value, and on an update the mean of the gradients
        self.accumulator = acc
        if steps is not None:
            summed = [g + a for g, a in zip(gs, treedef.flatten_up_to(acc))]
            gs = [a / steps for a in summed]
            new = [jnp.where(self.is_update, 0, a) for a in summed]
            self.accumulator = jax_support.like(treedef.unflatten(new), acc)
        self.gs = gs

    def clipped(self, gs: list) -> list:
        """The gradients clipped, as an update reads them."""
        o = self.options
        if o.clipnorm is not None:
            c = o.clipnorm
            gs = [c * g / jnp.maximum(c, jnp.sqrt(jnp.sum(g**2))) for g in gs]
        if o.global_clipnorm is not None:
            c = o.global_clipnorm
            total = 0.0
            for g in gs:
                total = total + jnp.sum(g**2)
            gs = [g * c / jnp.maximum(c, jnp.sqrt(total)) for g in gs]
        if o.clipvalue is not None:
            gs = [jnp.clip(g, -o.clipvalue, o.clipvalue) for g in gs]
        return gs

    def run(self, rule: Callable[[list, list, dict], tuple[list, dict]], states: dict) -> tuple[list, dict]:
        """The increments and the rule's new state: ``rule(gradients, parameters, states)`` after the
        clipping and the decoupled weight decay, on an update; on a call that only accumulates, no
        increment and the state as it was (``jax.lax.cond``: the rule is not computed)."""
        o, lr = self.options, self.lr

        def update(operands: tuple) -> tuple[list, dict]:
            gs, states = operands
            gs = self.clipped(gs)
            ws = self.ws
            if o.weight_decay is None:
                return rule(gs, ws, states)
            # decoupled weight decay, before the rule (which sees the decayed parameters)
            decay = [-lr * w * o.weight_decay for w in ws]
            updates, states = rule(gs, [w + d for w, d in zip(ws, decay)], states)
            return [d + u for d, u in zip(decay, updates)], states

        operands = (self.gs, states)
        # known now (no accumulation, or an eager call): Python picks the branch; an eager lax.cond
        # would compile both branches again on every call (half a second a step for Nadam on CPU)
        traced = isinstance(self.is_update, jax.core.Tracer)
        if not traced and bool(self.is_update):
            return update(operands)
        # what the rule returns (traced, not run), so that a call that does not update returns the same
        shapes = jax.eval_shape(update, operands)

        def accumulate(operands: tuple) -> tuple[list, dict]:
            _, states = operands
            cast = jax.tree.map(lambda x, s: jnp.asarray(x, s.dtype), states, shapes[1])
            return [jnp.zeros(s.shape, s.dtype) for s in shapes[0]], cast

        if not traced:
            return accumulate(operands)
        return jax.lax.cond(self.is_update, update, accumulate, operands)

    def finish(self, updates: list, ema: Any) -> tuple[Any, Any]:
        """The increments (in the parameters' dtypes) and the EMA of the weights, on every call."""
        o = self.options
        if o.use_ema:
            new = []
            for i, (u, w, e) in enumerate(zip(updates, self.ws, self.treedef.flatten_up_to(ema))):
                # EMA of the weights
                e = e * self.ema_mu + (1 - self.ema_mu) * (u + w)
                # EMA overwrite: the increment that takes w to e is e - w, except where e is already the new
                # weight w + u (kept as it is: an infinite weight's e - w would be inf - inf = NaN)
                if o.ema_overwrite_frequency is not None:
                    to_ema = jnp.where(e == u + w, u, e - w)
                    u = jnp.where(self.t % o.ema_overwrite_frequency == 0, to_ema, u)
                updates[i] = u
                new.append(e)
            ema = jax_support.like(self.treedef.unflatten(new), ema)
        out = [u.astype(dtype) for u, dtype in zip(updates, self.dtypes)]
        return self.treedef.unflatten(out), ema


def check_kept(module: str, state: Any, name: str, kept: Any, when: str) -> None:
    """``finalize_variable_values``' check that the state ``name`` is kept exactly where the keywords it was
    given say (``kept``: the condition, ``when``: as written): keywords other than the optimizer's (an EMA
    kept, ``use_ema`` not given again) are an error that says so, never the raw weights in silence."""
    present = getattr(state, name) is not None
    if present != bool(kept):
        raise ValueError(
            f"{module}.finalize_variable_values: the state {'keeps' if present else 'keeps no'} {name!r}, which"
            f" it does only when {when}: pass the keywords {module}() was built with"
        )
