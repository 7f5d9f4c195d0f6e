"""Library rules written and equal to their reference in float64, but not registered (the registry skips
this package): each fails a registry test whose assumption does not hold for it.

- ``optax_sign_sgd``, ``optax_fromage``: clipping cannot change their update (a sign; ``||w||*g/||g||``),
  so ``test_zero_means_off_like_none``, which checks that an option given a value moves something, sees
  nothing move.
- ``optax_lamb``, ``optax_lars``: ``test_training_loop_decreases_loss`` wants the loss halved at a fixed
  rate; optax.lamb itself goes from 11.1 to 5.8.
- ``optax_rprop``: optax applies the previous step's update, so the first step moves nothing, which
  several tests assume it does.

To register one: move its file up into ``rules/``, run ``optforge build`` and ``optforge plots``, and make
the tests say what holds for it.
"""
