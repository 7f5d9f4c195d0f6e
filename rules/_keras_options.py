"""Keras 3's options shared by every optimizer, written once as a rule transform (a rule in, a rule out).

Seed pages 002 and 004; exact semantics in REFERENCE_RULES.md sections 2.1-2.2. For one call of the step:

1. ``loss_scale_factor``: the gradient is divided by it, before anything else.
2. ``gradient_accumulation_steps = N``: the gradients of N calls are summed; the N-th call updates with
   their average, the others change nothing but the sum. The rule's step ``t`` counts updates
   (``n // N + 1``); a learning-rate schedule sees the raw call count ``n``.
3. On an update: ``clipnorm`` (per tensor), ``global_clipnorm`` (over all tensors) or ``clipvalue``
   (at most one), applied to the (averaged) gradient; then the decoupled ``weight_decay``,
   ``w <- w - w*weight_decay*lr``, before the rule. A rule that defines ``weight_decay`` itself
   (NovoGrad's coupled one, optax's) keeps its own meaning: this option is not added to it.
4. The rule, only on updates.
5. ``use_ema``: on every call, ``ema <- mu*ema + (1 - mu)*w`` with ``mu = 0`` on the first update (so the
   average starts at the weights after it) and ``ema_momentum`` after; with ``ema_overwrite_frequency = F``
   the weights are replaced by the average after every F-th update (for the N calls of that update, with
   accumulation, as in Keras). ``F = 0`` means never, as Keras's TensorFlow and torch backends do (its JAX
   backend overwrites on every step). ``finalize_variable_values`` copies the averages in at the end.

An option that is off (None) costs nothing: its equations are skipped and its state is not created.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from optforge.compiler.dsl import (
    Eq,
    Given,
    Rule,
    clip,
    g,
    global_norm,
    idiv,
    imod,
    maximum,
    n,
    t,
    tensor_norm,
    w,
    where,
)


def keras_options(rule: Rule) -> Rule:
    """``rule`` with Keras's shared options (see the module docstring)."""
    r = rule.derive(rule.name, title=rule.title, summary=rule.summary, module=rule.module)
    r.base, r.file, r.configs = rule.base, rule.file, dict(rule.configs)
    r.transforms.append("keras_options")
    r.inner = rule  # the plain backends print the rule alone; runtime/options_*.py run the options around it
    r.wrap = keras_options
    lr = sp.Symbol("learning_rate")

    own_weight_decay = "weight_decay" in rule.hypers
    if own_weight_decay:  # the rule's own meaning wins; say so where the user reads it
        h = r.hypers["weight_decay"]
        r.hypers["weight_decay"] = dataclasses.replace(
            h, meaning=h.meaning + "; this optimizer's own, not Keras's decoupled weight_decay option"
        )
    else:
        wd = r.option(
            "weight_decay",
            "[0, inf)",
            "decoupled weight decay, w <- w - w*weight_decay*lr before the update",
            latex=r"\lambda",
        )
    clipnorm = r.option(
        "clipnorm",
        "[0, inf)",
        "clip each gradient to this norm (0: off)",
        zero_is_off=True,
        latex=r"c_{\mathrm{norm}}",
    )
    clipvalue = r.option(
        "clipvalue",
        "[0, inf)",
        "clip each gradient entry to [-clipvalue, clipvalue]",
        zero_is_off=True,
        latex=r"c_{\mathrm{value}}",
    )
    global_clipnorm = r.option(
        "global_clipnorm",
        "[0, inf)",
        "clip the gradients so that their global norm is at most this",
        zero_is_off=True,
        latex=r"c_{\mathrm{global}}",
    )
    r.exclusive("clipnorm", "clipvalue", "global_clipnorm")
    use_ema = r.flag("use_ema", False, "keep an exponential moving average (EMA) of the weights")
    ema_momentum = r.hyper(
        "ema_momentum", 0.99, "[0, 1]", "momentum of the EMA of the weights", latex=r"\mu_{ema}"
    )
    overwrite = r.option(
        "ema_overwrite_frequency",
        "[0, inf)",
        "replace the weights by their EMA every this many updates (None or 0: never)",
        integer=True,
        zero_is_off=True,
        latex="F",
    )
    loss_scale = r.option("loss_scale_factor", "(0, inf)", "the gradients are divided by it first", latex="s")
    steps = r.option(
        "gradient_accumulation_steps",
        "[2, inf)",
        "update every N calls, with the average gradient",
        integer=True,
        latex="N",
    )
    acc = r.state(
        "grad_accumulator", 0, "sum of the gradients since the last update", exists_if=Given(steps), latex="S"
    )
    ema = r.state("ema", 0, "exponential moving average of the weights", exists_if=use_ema, latex=r"\bar{w}")

    body = r.equations
    r.core = list(body)
    r.equations = []
    updates = where(Given(steps), idiv(n, steps), n)  # the updates before this call
    if body and body[0].target == "t":  # the rule's own step (rule.define_step), of the updates, not calls
        own, body = body[0], body[1:]
        r.define_step(own.expr.xreplace({n: updates}), f"{own.label}, of the updates, not the calls")
    else:
        r.define_step(updates + 1, "the step counts updates, not calls")
    update = r.let(
        "is_update",
        sp.Or(sp.Not(Given(steps)), Eq(imod(n + 1, steps), 0)),
        "an update call",
        latex=r"\mathrm{update}",
    )
    r.assign(g, g / loss_scale, "loss scaling", only_if=Given(loss_scale))
    r.assign(acc, acc + g, "gradient accumulation", only_if=Given(steps))
    r.assign(g, acc / steps, "gradient accumulation", only_if=Given(steps) & update)
    r.assign(acc, sp.S.Zero, "gradient accumulation", only_if=Given(steps) & update)
    r.assign(
        g, g * clipnorm / maximum(tensor_norm(g), clipnorm), "clipping", only_if=Given(clipnorm) & update
    )
    # Keras's g*c*min(1/G, 1/c), written so that an all-zero gradient does not compute 1/0
    r.assign(
        g,
        g * global_clipnorm / maximum(global_norm(g), global_clipnorm),
        "clipping",
        only_if=Given(global_clipnorm) & update,
    )
    r.assign(g, clip(g, -clipvalue, clipvalue), "clipping", only_if=Given(clipvalue) & update)
    if not own_weight_decay:
        r.assign(w, w - w * wd * lr, "decoupled weight decay", only_if=Given(wd) & update)

    # a state the rule never reads the previous value of needs no keeping between updates (no storage)
    read, assigned = set(), set()
    for eq in body:  # names read before the rule assigns them: their previous step's value is used
        read |= {s.name for s in eq.expr.free_symbols} - assigned
        assigned.add(eq.target)
    for eq in body:  # the rule itself, on update calls only (its intermediate values too)
        kept = eq.kind != "let" and (eq.target in read or eq.target not in rule.states)
        keep = sp.Symbol(eq.target) if kept else sp.S.Zero
        r.equations.append(dataclasses.replace(eq, expr=where(update, eq.expr, keep)))

    mu = r.let(
        "ema_mu", where(Eq(t, 1), 0, ema_momentum), "EMA momentum (0 at the first update)", latex=r"\mu'"
    )
    r.assign(ema, mu * ema + (1 - mu) * w, "EMA of the weights", only_if=use_ema)
    overwrite_now = r.let(
        "ema_overwrite",
        Given(overwrite) & Eq(imod(t, overwrite), 0),
        "an update after which the EMA replaces the weights (with use_ema)",
        latex=r"\mathrm{overwrite}",
    )
    r.assign(w, ema, "EMA overwrite", only_if=use_ema & overwrite_now)
    r.finalizer(ema, "EMA of the weights", only_if=use_ema)
    return r
