"""optforge: optimizers written once as symbolic rules, compiled to NumPy, JAX and PyTorch.

Subpackages: ``optforge.rules`` (the rules), ``optforge.compiler`` (DSL, IR,
passes), ``optforge.backends`` (printers and templates), ``optforge.generated``
(the committed modules: ``optforge.generated.numpy``, ``.jax``, ``.torch``),
``optforge.runtime`` (what generated modules need at run time).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``optforge.load`` (``loader.load``), imported when first used: ``import optforge`` stays light."""
    if name == "load":
        from .loader import load

        return load
    raise AttributeError(f"module 'optforge' has no attribute {name!r}")
