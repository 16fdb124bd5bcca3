from ...configuration import register_method
from .config import VBPConfig
from .pruner import VBPPruner

register_method("vbp", VBPConfig, VBPPruner)

__all__ = ["VBPConfig", "VBPPruner"]
