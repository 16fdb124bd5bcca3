"""SPDY (speed-up-constrained per-layer widths): ``config.py`` (``SPDYConfig``), ``search.py`` (the dynamic programme
and the coefficient search as plain functions), ``database.py`` (the layer-wise database of a base method's
scores), ``pruner.py`` (tables from the latency profiler or MACs, the search on stitched models, the surgery on the
shared structured core). See docs/spdy.md."""

from ...configuration import register_method
from .config import SPDYBaseMethodError, SPDYConfig, SPDYTargetError

register_method("spdy", SPDYConfig, ".pruner:SPDYPruner")

__all__ = ["SPDYBaseMethodError", "SPDYConfig", "SPDYTargetError"]
