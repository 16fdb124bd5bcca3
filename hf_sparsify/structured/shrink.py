"""Shrinking a structure group to the units it keeps, with an optional bias fold of the removed units.

The physical surgery (slicing producer rows, consumer columns and extra parameters, creating or updating the
consumer's bias, updating the owner's head count) is :mod:`hf_sparsify.surgery.shrink`; this is the one call the
structured methods make.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import StructureGroup
from ..surgery import fold_into_bias, keep_units

__all__ = ["removed_units", "shrink_group"]


def removed_units(num_units: int, keep: torch.Tensor) -> torch.Tensor:
    """The sorted indices of ``range(num_units)`` not in ``keep``."""
    removed = torch.ones(num_units, dtype=torch.bool)
    removed[torch.as_tensor(keep, dtype=torch.long)] = False
    return removed.nonzero().flatten()


@torch.no_grad()
def shrink_group(model: nn.Module, group: StructureGroup, keep: torch.Tensor, fold_values: torch.Tensor | None = None) -> StructureGroup:
    """Keep the units ``keep`` of ``group`` (indices, any order) and remove the others.

    Args:
        fold_values: one value per *row* of the group (``num_units × unit_size``: a removed unit's constant
            output, e.g. its mean activation); the removed rows' values are first folded into the consumers' bias,
            ``b += W[:, removed rows] · values[removed rows]``, computed in float64 and written in the model's
            dtype. ``None``: the units are just removed.

    Returns:
        The updated group (``num_units`` is the new width).
    """
    keep = torch.as_tensor(keep, dtype=torch.long).unique(sorted=True)
    if fold_values is not None:
        units = removed_units(group.num_units, keep)
        if units.numel():
            values = fold_values.detach().cpu().reshape(group.num_units, group.unit_size)[units].reshape(-1)
            fold_into_bias(model, group, units, values)
    return keep_units(model, group, keep)
