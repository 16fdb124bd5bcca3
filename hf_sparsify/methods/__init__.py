"""Pruning methods. Each lives in its own folder (``config.py`` + its implementation) and joins the registry in its
``__init__.py`` with one ``register_method(...)`` line. The registry discovers the folders of this package; it never
names them (see :func:`hf_sparsify.configuration.available_methods`).

``Pruner``, ``PruningError`` and ``PruningResult`` (from :mod:`.base`) are imported on first use, so that the
registry can import the methods' configuration modules (``hf-sparsify --help``) without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Pruner", "PruningError", "PruningResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .base import Pruner, PruningError, PruningResult
