"""Which MLP neurons VBP removes: per-layer score normalisation, kernel-friendly widths, and the allocation of a
budget (a number of neurons or of MACs) across layers. Plain functions on tensors and lists.

```python
>>> from hf_sparsify.methods.vbp.selection import plan_global, kept_units
>>> widths = plan_global([var0, var1], unit_costs=[1.0, 1.0], target=64, round_to=8, min_keep=8)
>>> keep0 = kept_units(var0, widths[0])       # indices of the highest-variance neurons, sorted
```
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

__all__ = ["normalize_scores", "output_scale", "allowed_widths", "kept_units", "plan_per_layer", "plan_global", "plan_per_layer_for_target", "removed_cost"]


def normalize_scores(variance: torch.Tensor, method: str = "mean", output_scale: float | None = None) -> torch.Tensor:
    """Make one layer's variances comparable with other layers' before a global threshold.

    ``"mean"``: divide by the layer's mean variance; ``"max"``: by its largest; ``"none"``: unchanged;
    ``"output"``: multiply by ``output_scale``, the mean squared norm of the layer's ``fc2`` columns (times
    LayerScale²), which puts every layer's variances in units of the residual stream they are added to. The order
    inside the layer never changes. A ``"mean"``/``"max"`` layer whose variances are all zero gets all-zero scores.
    """
    variance = variance.to(torch.float64)
    if method == "none":
        return variance
    if method == "output":
        if output_scale is None:
            raise ValueError("the 'output' normalisation needs output_scale (see output_scale())")
        return variance * float(output_scale)
    if method == "mean":
        scale = variance.mean()
    elif method == "max":
        scale = variance.max()
    else:
        raise ValueError(f"unknown normalisation {method!r}; use 'mean', 'max', 'none' or 'output'")
    return variance / scale if scale > 0 else torch.zeros_like(variance)


def output_scale(consumer_weight: torch.Tensor, layer_scale: torch.Tensor | None = None) -> float:
    """Mean over units of ``‖γ ⊙ W2[:, j]‖²``: how much output variance a unit of unit variance adds, on average."""
    w = consumer_weight.detach().to(torch.float64)
    if layer_scale is not None:
        w = w * layer_scale.detach().to(torch.float64).reshape(-1, 1)
    return float(w.square().sum(0).mean()) if w.shape[1] else 0.0


def allowed_widths(num_units: int, round_to: int = 8, min_keep: int = 1) -> list[int]:
    """Widths a layer may be pruned to, largest first: its full width, then the multiples of ``round_to`` below
    it down to ``min_keep`` rounded up to a multiple of ``round_to`` (0 only when ``min_keep == 0``)."""
    smallest = math.ceil(min_keep / round_to) * round_to
    widths = [num_units]
    top = (num_units - 1) // round_to * round_to
    widths += [w for w in range(top, smallest - 1, -round_to) if w < num_units]
    return widths


def kept_units(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Sorted indices of the ``width`` units with the largest scores (ties: the lower index is removed first)."""
    order = torch.sort(scores.detach().cpu(), stable=True).indices  # ascending: removal order
    return order[scores.numel() - width :].sort().values


def removed_cost(num_units: Sequence[int], widths: Sequence[int], unit_costs: Sequence[float]) -> float:
    return float(sum((n - w) * c for n, w, c in zip(num_units, widths, unit_costs)))


def _nearest(ascending: list[int], wanted: float) -> int:
    """The value of ``ascending`` nearest ``wanted`` (ties: the larger)."""
    i = bisect.bisect_left(ascending, wanted)
    candidates = ascending[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda w: (abs(w - wanted), -w))


def plan_per_layer(num_units: Sequence[int], ratio: float, round_to: int = 8, min_keep: int = 1) -> list[int]:
    """The same ratio in every layer: each width is the allowed width nearest ``n·(1 − ratio)`` (ties keep more)."""
    return [_nearest(sorted(allowed_widths(n, round_to, min_keep)), n * (1.0 - ratio)) for n in num_units]


def plan_per_layer_for_target(
    num_units: Sequence[int], unit_costs: Sequence[float], target: float, round_to: int = 8, min_keep: int = 1, steps: int = 2000
) -> tuple[list[int], float]:
    """The common ratio (searched on a grid of ``steps``) whose per-layer widths remove a cost closest to
    ``target``; returns ``(widths, ratio)``."""
    options = [sorted(allowed_widths(n, round_to, min_keep)) for n in num_units]
    best = None
    for i in range(steps):
        ratio = i / steps
        widths = [_nearest(o, n * (1.0 - ratio)) for o, n in zip(options, num_units)]
        gap = abs(removed_cost(num_units, widths, unit_costs) - target)
        if best is None or gap < best[0] - 1e-9 * max(1.0, abs(target)):
            best = (gap, widths, ratio)
    return best[1], best[2]


def plan_global(
    scores: Sequence[torch.Tensor], unit_costs: Sequence[float], target: float, round_to: int = 8, min_keep: int = 1
) -> list[int]:
    """One threshold across layers on (normalised) scores.

    Each layer is removed in chunks that step between its allowed widths, lowest scores first; a chunk's
    threshold is the largest score it removes. Chunks are taken in increasing threshold order while the removed
    cost (``Σ removed units × unit cost``) gets closer to ``target``. Returns the kept width per layer.
    """
    events = []
    for layer, s in enumerate(scores):
        ordered = torch.sort(s.detach().cpu().to(torch.float64), stable=True).values
        n = ordered.numel()
        widths = allowed_widths(n, round_to, min_keep)
        for step in range(1, len(widths)):
            threshold = float(ordered[n - widths[step] - 1])
            events.append((threshold, layer, step, (widths[step - 1] - widths[step]) * float(unit_costs[layer]), widths[step]))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    kept = [s.numel() for s in scores]
    removed = 0.0
    for _, layer, _, cost, width in events:
        after = removed + cost
        if abs(after - target) < abs(removed - target) or after <= target:
            kept[layer] = width
            removed = after
        else:
            break
    return kept
