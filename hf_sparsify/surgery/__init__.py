"""Surgery shared by all methods: masks, physical shrinking with bias folding, widening, and shape records."""

from .expand import add_units, widened_width
from .masks import apply_masks, check_nm, lowest_k_masks, masks_from_weights, nm_groups_view, nm_mask
from .shapes import METADATA_KEY, apply_shapes, dense_config, dense_skeleton, get_metadata, is_structured, record_shapes
from .shrink import fold_into_bias, keep_units, remove_units

__all__ = [
    "METADATA_KEY",
    "add_units",
    "apply_masks",
    "apply_shapes",
    "check_nm",
    "dense_config",
    "dense_skeleton",
    "fold_into_bias",
    "get_metadata",
    "is_structured",
    "keep_units",
    "lowest_k_masks",
    "masks_from_weights",
    "nm_groups_view",
    "nm_mask",
    "record_shapes",
    "remove_units",
    "widened_width",
]
