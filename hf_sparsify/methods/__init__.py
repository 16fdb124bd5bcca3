"""Pruning methods. Each lives in its own folder (``config.py`` + its implementation) and joins the registry in its
``__init__.py`` with one ``register_method(...)`` line. The registry discovers the folders of this package; it never
names them (see :func:`hf_sparsify.configuration.available_methods`)."""

from .base import Pruner, PruningError, PruningResult

__all__ = ["Pruner", "PruningError", "PruningResult"]
