"""optforge: optimizers written once as symbolic rules, compiled to NumPy, JAX and PyTorch.

Subpackages: ``optforge.rules`` (the rules), ``optforge.compiler`` (DSL, IR,
passes), ``optforge.backends`` (printers and templates), ``optforge.generated``
(the committed modules: ``optforge.generated.numpy``, ``.jax``, ``.torch``),
``optforge.runtime`` (what generated modules need at run time).
"""

__version__ = "0.1.0"
