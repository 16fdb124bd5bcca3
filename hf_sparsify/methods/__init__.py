"""Pruning methods. Each lives in its own folder (``config.py`` + ``pruner.py``) and joins the registry in its
``__init__.py`` with one ``register_method(...)`` line; importing this package registers them all."""

from .base import Pruner, PruningError, PruningResult
from .cap import CAPConfig, CAPPruner, FastCAPConfig, FastCAPPruner, WoodFisherConfig, WoodFisherPruner
from .magnitude import MagnitudeConfig, MagnitudePruner
from .vbp import VBPConfig, VBPPruner

__all__ = [
    "CAPConfig",
    "CAPPruner",
    "FastCAPConfig",
    "FastCAPPruner",
    "MagnitudeConfig",
    "MagnitudePruner",
    "Pruner",
    "PruningError",
    "PruningResult",
    "VBPConfig",
    "VBPPruner",
    "WoodFisherConfig",
    "WoodFisherPruner",
]
