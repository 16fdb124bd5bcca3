"""VBP (Variance-Based Pruning): ``config.py`` (``VBPConfig``), ``pruner.py`` (variance scores and the mean-shift
fold on the shared structured-pruning core)."""

from ...configuration import register_method
from .config import VBPConfig

register_method("vbp", VBPConfig, ".pruner:VBPPruner")

__all__ = ["VBPConfig"]
