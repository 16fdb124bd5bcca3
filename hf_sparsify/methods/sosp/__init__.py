"""SOSP (Second-Order Structured Pruning): ``config.py`` (``SOSPHConfig``, ``SOSPIConfig``), ``saliency.py`` (the
saliencies and loss-change predictions as tensor functions), ``pruner.py`` (gate-space curvature on the gradient
engine, global selection and shrinking on the shared structured-pruning core). See docs/sosp.md."""

from ...configuration import register_method
from .config import SOSPConfig, SOSPHConfig, SOSPIConfig

register_method("sosp-h", SOSPHConfig, ".pruner:SOSPPruner")
register_method("sosp-i", SOSPIConfig, ".pruner:SOSPPruner")

__all__ = ["SOSPConfig", "SOSPHConfig", "SOSPIConfig"]
