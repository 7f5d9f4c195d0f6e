"""The backends: one printer and one set of templates per framework.

``BACKENDS`` is the only list of them; the build and the tests iterate it.
"""

from __future__ import annotations

from .base import Backend


def backends() -> dict[str, Backend]:
    from .fused.printer import FusedBackend
    from .jax.printer import JaxBackend
    from .numpy.printer import NumPyBackend
    from .torch.printer import TorchBackend
    from .triton.printer import TritonBackend

    return {
        b.name: b for b in (NumPyBackend(), JaxBackend(), TorchBackend(), FusedBackend(), TritonBackend())
    }


__all__ = ["Backend", "backends"]
