"""The reference implementations each rule is checked against, and where their semantics coincide.

Sources: ../shared/REFERENCE_RULES.md section 2 (Keras 3) and section 4 (where
Keras, torch.optim and optax agree).  Each entry maps our hyperparameters to
the reference's constructor, or returns None where the semantics differ.
"""

from __future__ import annotations


def keras_optimizer(rule_name: str, hypers: dict, learning_rate):
    """Keras 3 optimizer with our hyperparameters (Keras's names are ours)."""
    import keras

    cls = {
        "SGD": keras.optimizers.SGD,
        "Adamax": keras.optimizers.Adamax,
        "Adagrad": keras.optimizers.Adagrad,
        "Nadam": keras.optimizers.Nadam,
    }[rule_name]
    kw = {k: v for k, v in hypers.items() if k != "learning_rate"}
    return cls(learning_rate=learning_rate, **kw)


def keras_run(rule_name, hypers, params0, grads, learning_rate, finalize=False):
    """Keras's own apply, jitted through its stateless API (eager Keras takes seconds per run); with
    ``finalize``, the values written back and ``finalize_variable_values`` applied. ``learning_rate`` a
    float or a Keras schedule (traced under jit: jax.numpy, float64)."""
    import jax
    import keras
    import numpy as np

    keras.config.set_floatx("float64")
    variables = [keras.Variable(p, dtype="float64") for p in params0]
    opt = keras_optimizer(rule_name, hypers, learning_rate)
    opt.build(variables)
    step = jax.jit(opt.stateless_apply)
    values = [v.value for v in variables]
    opt_values = [v.value for v in opt.variables]
    for g in grads:
        values, opt_values = step(opt_values, [jax.numpy.asarray(x) for x in g], values)
    if finalize:
        for v, x in [*zip(variables, values), *zip(opt.variables, opt_values)]:
            v.assign(x)
        opt.finalize_variable_values(variables)
        values = [v.value for v in variables]
    return [np.asarray(v) for v in values]


def keras_schedule(schedule):
    """A Keras schedule computing ``schedule(step)`` (drivers.varying_lr: jax.numpy for a traced step)."""
    import keras

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(step)

    return Schedule()


KERAS_RULES = {"SGD", "Adamax", "Adagrad", "Nadam"}

#: rules checked against other oracles (tests/test_novograd.py): optax.novograd and transcriptions of seed page 000
OTHER_ORACLES = {"NovoGrad", "NovoGradTF1", "OptaxNovoGrad"}


def torch_optimizer(rule_name: str, hypers: dict, params, defaults: dict):
    """torch.optim equivalent (constant learning rate only), or None where semantics differ (REFERENCE_RULES §4)."""
    import torch

    h = {**defaults, **hypers}
    lr = h["learning_rate"]
    if rule_name == "SGD":
        # equal for a constant lr with dampening 0: Keras's v = -lr * torch's buffer
        return torch.optim.SGD(params, lr=lr, momentum=h["momentum"], nesterov=h["nesterov"])
    if rule_name == "Adamax":
        if h["epsilon"] != 0:
            return None  # Keras adds eps to u outside the max, torch inside: they differ unless eps = 0
        return torch.optim.Adamax(params, lr=lr, betas=(h["beta_1"], h["beta_2"]), eps=0.0)
    if rule_name == "Adagrad":
        if h["epsilon"] != 0:
            return None  # Keras: g/sqrt(a + eps); torch: g/(sqrt(a) + eps)
        return torch.optim.Adagrad(
            params, lr=lr, initial_accumulator_value=h["initial_accumulator_value"], eps=0.0
        )
    if rule_name == "Nadam":
        # Keras's 0.96^t is torch's 0.96^(t*momentum_decay) with momentum_decay = 1; run with float64 default dtype
        # so that torch's mu_product is not rounded to float32
        return torch.optim.NAdam(
            params, lr=lr, betas=(h["beta_1"], h["beta_2"]), eps=h["epsilon"], momentum_decay=1.0
        )
    return None


def optax_transform(rule_name: str, hypers: dict, defaults: dict):
    """optax equivalent (constant learning rate), or None where semantics differ."""
    import optax

    h = {**defaults, **hypers}
    lr = h["learning_rate"]
    if rule_name == "SGD":
        return optax.sgd(lr, momentum=h["momentum"] or None, nesterov=h["nesterov"])
    if rule_name == "Adamax":
        if h["epsilon"] != 0:
            return None  # optax: max(|g| + eps, b2*u), as torch
        return optax.adamax(lr, b1=h["beta_1"], b2=h["beta_2"], eps=0.0)
    if rule_name == "Adagrad":
        if h["initial_accumulator_value"] <= 0:
            return None  # optax returns 0 where the accumulator is 0
        # optax.scale_by_rss: g * rsqrt(a + eps), eps inside the root as in Keras
        return optax.adagrad(lr, initial_accumulator_value=h["initial_accumulator_value"], eps=h["epsilon"])
    return None


# -- rules named after the library they reproduce ----------------------------------------------------
# A rule named Torch<Name> has the semantics, hyperparameter names and defaults of torch.optim.<Name>
# (torch's betas=(b1, b2) as beta1, beta2); Optax<Name> (module optax_<name>) those of optax.<name>. The
# reference tests find the reference from the rule's name: adding such a rule adds its tests.


#: a rule whose reference is two of its library's optimizers (a rule that falls back to another for the
#: tensors the first does not take), or its library's optimizer with a rounding it makes made exact
def _muon_with_adamw():
    """torch.optim.Muon with AdamW (``benchmarks/configs.py``), its bfloat16 cast made an identity: the
    float64 comparisons hold it to 1e-12."""
    import functools

    from optforge.benchmarks.configs import MuonWithAdamW

    return functools.partial(MuonWithAdamW, bfloat16=False)


def nearest_float32_decay(i, exponent=0.8):
    """optax's Adafactor decay ``1 - t^-c`` (``factorized._decay_rate_pow``, float32) with ``t^-c`` rounded to
    the nearest float32: XLA's float32 power is not always the nearest (1 ulp apart at 8 of the first 200
    steps on this CPU), the rule's ``float32()`` is."""
    import jax.numpy as jnp

    t = jnp.array(i + 1, jnp.float64)
    return jnp.float32(1.0) - (t ** (-exponent)).astype(jnp.float32)


def _adafactor_nearest_decay():
    """optax.adafactor (optax 0.2.8's chain, built of optax's own transforms as ``optax.adafactor`` builds
    it) with its decay's power rounded to the nearest float32 (``nearest_float32_decay``): the float64
    comparisons hold it to 1e-12; test_reference_libraries.py compares with optax.adafactor itself too."""
    import jax.numpy as jnp
    import optax
    from optax._src import factorized

    def adafactor(
        learning_rate=None,
        min_dim_size_to_factor=128,
        decay_rate=0.8,
        decay_offset=0,
        multiply_by_parameter_scale=True,
        clipping_threshold=1.0,
        momentum=None,
        weight_decay_rate=None,
        eps=1e-30,
        factored=True,
    ):
        chain = [
            factorized.scale_by_factored_rms(
                factored, decay_rate, decay_offset, min_dim_size_to_factor, eps, nearest_float32_decay
            )
        ]
        if clipping_threshold is not None:
            chain.append(optax.clip_by_block_rms(clipping_threshold))
        if learning_rate is not None:
            chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
        if multiply_by_parameter_scale:
            chain.append(optax.scale_by_param_block_rms())
        if momentum is not None:
            chain.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
        if weight_decay_rate is not None:
            chain.append(optax.add_decayed_weights(weight_decay_rate))
        chain.append(optax.scale(-1))
        return optax.chain(*chain)

    return adafactor


def _sm3_scheduled_scalars_as_vectors():
    """optax.sm3 (optax 0.2.8: ``chain(scale_by_sm3(momentum), scale(-learning_rate))``) built of optax's own
    transforms with two extensions that optax.sm3 refuses: the learning rate may be a schedule
    (``scale_by_learning_rate``, equal to ``scale(-learning_rate)`` for a number), and a 0-d tensor is given
    to ``scale_by_sm3`` as a vector of one element (optax fails on it: ``scale_by_sm3`` indexes the empty
    list of the scalar's axes). tests/test_cover.py compares the rule with optax.sm3 itself as well."""
    import jax
    import jax.numpy as jnp
    import optax

    def vectors(tree):
        return jax.tree.map(lambda x: jnp.reshape(x, (1,)) if jnp.ndim(x) == 0 else x, tree)

    def sm3(learning_rate, momentum=0.9):
        inner = optax.chain(optax.scale_by_sm3(momentum), optax.scale_by_learning_rate(learning_rate))

        def update(updates, state, params=None):
            new, state = inner.update(vectors(updates), state)
            return jax.tree.map(lambda u, x: jnp.reshape(u, jnp.shape(x)), new, updates), state

        return optax.GradientTransformation(lambda params: inner.init(vectors(params)), update)

    return sm3


def _polyak_sgd_learning_rate():
    """optax.polyak_sgd with its ``scaling`` named ``learning_rate`` (the rule's name for it, as every rule's
    rate is): the same transform, its other keywords and defaults optax's own."""
    import optax

    def polyak_sgd(learning_rate=1.0, max_learning_rate=1.0, f_min=0.0, eps=0.0, variant="sps"):
        return optax.polyak_sgd(
            max_learning_rate=max_learning_rate, scaling=learning_rate, f_min=f_min, eps=eps, variant=variant
        )

    return polyak_sgd


COMPOSITES = {
    "TorchMuon": ("torch", _muon_with_adamw),
    "OptaxAdafactor": ("optax", _adafactor_nearest_decay),
    "OptaxSm3": ("optax", _sm3_scheduled_scalars_as_vectors),
    "OptaxPolyakSgd": ("optax", _polyak_sgd_learning_rate),
}


def library_reference(rule):
    """("torch" | "optax", the reference's constructor) for a rule named after its library, else None."""
    if rule.name in COMPOSITES:
        library, make = COMPOSITES[rule.name]
        return library, make()
    if rule.name.startswith("Torch"):
        import torch

        library, name, where = "torch", rule.name[len("Torch") :], torch.optim
    elif rule.name.startswith("Optax"):
        import optax

        library, name, where = "optax", rule.module[len("optax_") :], optax
    else:
        return None
    if library == "optax" and not hasattr(where, name) and hasattr(where.contrib, name):
        where = where.contrib  # optax.contrib.muon
    if not hasattr(where, name):
        raise LookupError(
            f"rule {rule.name} ({rule.file}): expected {where.__name__}.{name} to exist (a rule named"
            f" {library.capitalize()}<Name> reproduces {where.__name__}.<Name>), received no such attribute"
        )
    return library, getattr(where, name)


def library_kwargs(rule, hypers: dict, learning_rate) -> dict:
    """Our hyperparameters (the rule's own, not Keras's options) in the reference's keywords."""
    own = {h: d.default for h, d in rule.hypers.items() if h in _own_hypers(rule)}
    kw = {k: v for k, v in {**own, **hypers}.items() if k != "learning_rate"}
    if rule.name.startswith("Torch"):  # torch's tuples (betas, etas...), as the generated module names them
        from optforge.backends.torch.printer import torch_names

        tuples: dict[str, dict[int, object]] = {}
        for name, (key, index) in torch_names(list(rule.hypers)).items():
            if name in kw:
                value = kw.pop(name)
                if index is None:
                    kw[key] = value
                else:
                    tuples.setdefault(key, {})[index] = value
        kw.update({key: tuple(parts[i] for i in sorted(parts)) for key, parts in tuples.items()})
        return dict(lr=learning_rate, **kw)
    return dict(learning_rate=learning_rate, **kw)


def _own_hypers(rule) -> set[str]:
    """The hyperparameters the rule's own equations read (Keras's shared options are around every rule)."""
    names: set[str] = set()
    for eq in rule.core or rule.equations:
        for expr in (eq.expr, eq.when):
            names |= {s.name for s in getattr(expr, "free_symbols", ())}
    return names & set(rule.hypers)
