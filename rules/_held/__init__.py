"""Library rules written and equal to their reference in float64, but not registered (the registry skips
this package): each fails registry tests whose assumption does not hold for it.

- ``optax_rprop``: optax applies the previous step's update, so the first step moves nothing, which
  several tests assume it does (the closure, dtype, in-place, accumulation and zero-rate group tests); and
  optax's ``rprop`` takes a number as its learning rate (the first step size), not a schedule.

To register one: move its file up into ``rules/``, run ``optforge build`` and ``optforge plots``, and make
the tests say what holds for it.
"""
