"""Saving and reloading pruned models."""

from .save import SUMMARY_NAME, attach_pruning_state, save_pretrained

__all__ = ["SUMMARY_NAME", "attach_pruning_state", "save_pretrained"]
