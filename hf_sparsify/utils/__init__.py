"""Small shared helpers: progress bars, logging, phase timing and the scratch-memory budget."""

from .logging import get_logger, progress
from .timing import PhaseTimer, workspace_bytes

__all__ = ["PhaseTimer", "get_logger", "progress", "workspace_bytes"]
