"""SPDY (speed-up-constrained per-layer widths or sparsity levels): ``config.py`` (``SPDYConfig``), ``search.py`` (the
dynamic programme and the coefficient search as plain functions), ``database.py`` (the layer-wise database of a
base method's scores), ``calibration.py`` (the calibration loss of a stitched model), ``outcome.py`` (the budget,
the ``info["spdy"]`` record and the measured speed-up, shared by both flows), ``pruner.py`` (widths: tables from the
latency profiler or MACs, the search on stitched models, the surgery on the shared structured core) and
``unstructured.py`` (sparsity levels from magnitude, CAP or FastCAP). See docs/spdy.md."""

from ...configuration import register_method
from .config import SPDYBaseMethodError, SPDYConfig, SPDYTargetError

register_method("spdy", SPDYConfig, ".pruner:SPDYPruner")

__all__ = ["SPDYBaseMethodError", "SPDYConfig", "SPDYTargetError"]
