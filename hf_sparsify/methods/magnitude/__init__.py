"""Magnitude pruning, the baseline: ``config.py`` (``MagnitudeConfig``) and ``pruner.py``."""

from ...configuration import register_method
from .config import MagnitudeConfig

register_method("magnitude", MagnitudeConfig, ".pruner:MagnitudePruner")

__all__ = ["MagnitudeConfig"]
