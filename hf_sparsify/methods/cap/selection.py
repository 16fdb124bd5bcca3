"""How many weights each Fisher block loses: one threshold on cumulative block loss (CAP), or the lowest
saliencies (WoodFisher), across all target layers ("global", the paper's) or per layer ("uniform").

CAP's score of step ``k`` of a block is the block's cumulative loss after ``k`` removals; it never decreases
along the block's path, so taking the ``K`` lowest scores of all blocks (ties in order of layer, block, step)
takes a prefix of every block's path: block ``b`` keeps its first ``k_b`` eliminations and ``Σ k_b = K`` exactly.
The already-pruned weights score ``−∞`` (they stay pruned).

```python
>>> from hf_sparsify.methods.cap.selection import select_counts
>>> cumloss_a = torch.tensor([[0.0, 1.0, 3.0], [0.5, 0.7, 2.0]])     # layer a: 2 blocks of 3 steps
>>> cumloss_b = torch.tensor([[0.2, 0.4, 5.0]])                      # layer b: 1 block, already one zero
>>> counts = select_counts([cumloss_a, cumloss_b], [torch.tensor([0, 0]), torch.tensor([1])], num_remove=5)
>>> [c.tolist() for c in counts]       # eliminations kept per block: 5 in all
[[1, 2], [2]]
```
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...surgery import lowest_k_masks

__all__ = ["forced_scores", "kept_threshold", "select_counts", "nm_remove_mask", "num_to_remove"]


def num_to_remove(numel: int, sparsity: float, already: int) -> int:
    """``round(sparsity · numel)``, never fewer than the weights already pruned."""
    return max(int(round(sparsity * numel)), int(already))


def forced_scores(cumloss: torch.Tensor, num_forced: torch.Tensor) -> torch.Tensor:
    """``cumloss`` with the steps that removed already-pruned weights set to ``−∞``."""
    steps = torch.arange(cumloss.shape[1], device=cumloss.device)
    forced = steps[None, :] < num_forced.to(cumloss.device)[:, None]
    return cumloss.masked_fill(forced, float("-inf"))


def select_counts(cumlosses: Sequence[torch.Tensor], num_forced: Sequence[torch.Tensor], num_remove: int) -> list[torch.Tensor]:
    """Per block, how many eliminations to keep so that exactly ``num_remove`` weights are removed in total,
    choosing the lowest cumulative losses over all the given layers (one global threshold).

    Args:
        cumlosses: per layer ``(n, B)`` cumulative losses of the elimination steps.
        num_forced: per layer ``(n,)`` already-pruned weights (their steps come first and are always kept).
        num_remove: the total number of weights to remove (at least the number already pruned).
    """
    scores = [forced_scores(c, f) for c, f in zip(cumlosses, num_forced)]
    masks = lowest_k_masks(scores, num_remove)
    return [mask.logical_not().sum(1) for mask in masks]


def kept_threshold(cumlosses: Sequence[torch.Tensor], num_forced: Sequence[torch.Tensor], counts: Sequence[torch.Tensor]) -> float | None:
    """The global threshold :func:`select_counts` applied: the largest cumulative loss of a kept elimination that
    removed a weight not already pruned (``None`` when only already-pruned weights are removed). A block's losses
    never decrease along its path, so its largest kept loss is the one of its last kept step."""
    best = None
    for cumloss, forced, count in zip(cumlosses, num_forced, counts):
        count = count.to(cumloss.device)
        fresh = count > forced.to(cumloss.device)
        if bool(fresh.any()):
            last = cumloss[fresh].gather(1, (count[fresh] - 1)[:, None].long())
            value = float(last.max().item())
            best = value if best is None else max(best, value)
    return best


def nm_remove_mask(scores: torch.Tensor, m: int, quota: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Remove the ``quota`` lowest scores of every group of ``m`` consecutive entries of ``scores`` (``(n, B)``),
    and every ``forced`` entry. Returns a bool mask, ``True`` where removed."""
    n, b = scores.shape
    groups = scores.reshape(-1, m)
    if forced is not None:
        groups = groups.masked_fill(forced.reshape(-1, m), float("-inf"))
    remove = torch.zeros_like(groups, dtype=torch.bool)
    if quota:
        idx = torch.topk(groups, quota, dim=1, largest=False, sorted=False).indices
        remove.scatter_(1, idx, True)
    remove = remove.reshape(n, b)
    if forced is not None:
        remove |= forced
    return remove
