"""Keeping the processes of a multi-process run in agreement after a pruning step, through Accelerate's collectives.

Every process runs the pruning method (a method may share its gradient work across processes, and float rounding
or the data a process saw can still make the processes' choices differ), then:

* :func:`broadcast_from_main_process` gives every process rank 0's weights and buffers
  (``accelerate.utils.broadcast``), so the masks read off the zeros are the same everywhere by construction;
* :func:`check_masks_identical` proves it: every process gathers the fingerprint of every other process's masks
  (``accelerate.utils.gather``) and a difference is an error.

On one process both do nothing.
"""

from __future__ import annotations

import torch
from accelerate.utils import broadcast, gather
from torch import nn

from ..errors import HfSparsifyError
from .masks import MaskState

__all__ = ["MasksDifferError", "broadcast_from_main_process", "check_masks_identical"]


class MasksDifferError(HfSparsifyError, RuntimeError):
    """The sparsity masks differ between the processes of a multi-process run."""


@torch.no_grad()
def broadcast_from_main_process(model: nn.Module, accelerator) -> None:
    """Overwrite every parameter and buffer of ``model`` with rank 0's values, in place, on every process."""
    if accelerator.num_processes <= 1:
        return
    tensors = [t.data for t in list(model.parameters()) + list(model.buffers())]
    received = broadcast(tensors, from_process=0)
    for tensor, value in zip(tensors, received):
        if value is not tensor:  # torch.distributed broadcasts in place; other back-ends may return new tensors
            tensor.copy_(value)


@torch.no_grad()
def check_masks_identical(masks: MaskState | None, accelerator) -> None:
    """Raise :class:`MasksDifferError` unless every process holds the same masks (compared by fingerprint)."""
    if accelerator.num_processes <= 1 or masks is None:
        return
    device = accelerator.device
    fingerprint = masks.fingerprint().to(device)
    counts = gather(torch.tensor([fingerprint.shape[0]], dtype=torch.float64, device=device))
    same = bool((counts == counts[0]).all())
    if same and fingerprint.numel():
        everyone = gather(fingerprint.contiguous()).reshape(accelerator.num_processes, *fingerprint.shape)
        same = bool((everyone == everyone[0]).all())
    if not same:
        raise MasksDifferError(
            "SparseTrainer: the sparsity masks differ between processes. Every process must start from the same "
            "weights (load the same checkpoint, same seed)."
        )
