"""Saving and reloading pruned models, and the compact sparse checkpoint format."""

from .compressed import COMPRESSED_WEIGHTS_NAME, compress_checkpoint, load_compressed, save_compressed
from .save import SUMMARY_NAME, attach_pruning_state, save_pretrained

__all__ = [
    "COMPRESSED_WEIGHTS_NAME",
    "SUMMARY_NAME",
    "attach_pruning_state",
    "compress_checkpoint",
    "load_compressed",
    "save_compressed",
    "save_pretrained",
]
