"""Small shared helpers: progress bars and logging."""

from .logging import get_logger, progress

__all__ = ["get_logger", "progress"]
