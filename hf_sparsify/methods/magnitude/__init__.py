from ...configuration import register_method
from .config import MagnitudeConfig
from .pruner import MagnitudePruner

register_method("magnitude", MagnitudeConfig, MagnitudePruner)

__all__ = ["MagnitudeConfig", "MagnitudePruner"]
