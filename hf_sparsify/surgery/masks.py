"""Masks: selection helpers shared by the unstructured methods, N:M groups, and applying masks to weights.

A mask is a bool tensor shaped like the weight, ``True`` where the weight is *kept*.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

__all__ = [
    "lowest_k_masks",
    "nm_groups_view",
    "nm_mask",
    "apply_masks",
    "masks_from_weights",
    "check_nm",
]


@torch.no_grad()
def lowest_k_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks that remove exactly the ``k`` lowest scores across all tensors (one global ranking).

    The scores are ranked in their own precision (the widest dtype among them: float64 scores are not rounded to
    float32), and exact ties are broken by position (earlier tensor, then earlier index), so the count is exact.
    Returns one keep-mask per score tensor, on the device of the scores.
    """
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot remove {k} of {total} weights")
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in scores), torch.bool)
    flat = torch.cat([s.detach().reshape(-1).to(dtype) for s in scores])
    keep = torch.ones(total, dtype=torch.bool, device=flat.device)
    if k:
        # stable sort keeps the position order among equal scores
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return [m.reshape(s.shape) for m, s in zip(torch.split(keep, sizes), scores)]


def nm_groups_view(weight: torch.Tensor, m: int) -> torch.Tensor:
    """The weight as (groups, M): consecutive weights along the input dimension of each output row.

    For a Conv2d weight (out, in, kh, kw) the groups run along the input channels at each kernel position
    (the weight is viewed as (out, kh, kw, in)), which is the layout sparse tensor cores use.
    """
    if weight.dim() == 4:
        weight = weight.permute(0, 2, 3, 1)
    inner = weight.shape[-1]
    if inner % m:
        raise ValueError(f"an N:M mask needs the input dimension ({inner}) to be a multiple of M={m}")
    return weight.reshape(-1, m)


def _from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4:
        out, cin, kh, kw = like.shape
        return groups.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return groups.reshape(like.shape)


def check_nm(weight_shape: torch.Size | Sequence[int], m: int, name: str = "layer") -> None:
    """Raise a clear error when a weight cannot hold an N:M pattern with groups of ``m``."""
    inner = weight_shape[1] if len(weight_shape) == 4 else weight_shape[-1]
    if inner % m:
        raise ValueError(
            f"{name}: its input dimension ({inner}) is not a multiple of M={m}, so an N:M mask cannot be applied; "
            "leave it out with ignore=[...] or use mask_structure='unstructured'."
        )


@torch.no_grad()
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive weights along the input dimension."""
    groups = nm_groups_view(scores, m)
    keep_idx = torch.topk(groups, n, dim=1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, keep_idx, True)
    return _from_groups(mask, scores)


@torch.no_grad()
def apply_masks(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Zero the pruned entries of each weight in place."""
    for weight, mask in zip(weights, masks):
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


@torch.no_grad()
def masks_from_weights(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Keep-masks read off the weights: ``True`` where a weight is non-zero."""
    return [w != 0 for w in weights]
