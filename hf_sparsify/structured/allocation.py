"""How many units every structure group keeps: plain functions on tensors and lists.

A structured method scores every unit (higher = more important) and gives a budget; the allocators turn that into
one width per group:

* :func:`plan_per_layer`: the same ratio in every group; :func:`plan_per_layer_for_target`: the common ratio whose
  widths remove a cost (MACs, parameters) closest to a target;
* :func:`plan_global`: one threshold across groups (and kinds) on scores made comparable first
  (:func:`normalize_scores`), removing the lowest-scored units until the removed cost is closest to a target;
* :func:`plan_dp`: a dynamic programme over per-group tables (error and cost of each candidate width), minimising
  the summed error with the summed cost within a budget; :func:`removal_errors` builds the error table from
  scores. Costs need not be linear in the width (measured latency).

Widths are restricted by :func:`allowed_widths`: multiples of ``round_to`` (kernels like multiples of 8 or 64),
at least ``min_keep`` (a ``min_per_layer`` guard, e.g. one head per attention), or the full width (a group may stay
dense). ``round_to`` and ``min_keep`` are one value for every group or one per group.

```python
>>> import torch
>>> from hf_sparsify.structured import kept_units, plan_global
>>> scores = [torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0.5, 0.6, 0.7, 0.05])]
>>> plan_global(scores, unit_costs=[1.0, 1.0], target=3, round_to=1, min_keep=1)   # the 3 lowest scores go
[2, 3]
>>> kept_units(scores[0], 2)                                                        # the 2 highest, sorted
tensor([1, 3])
```
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

from ..errors import HfSparsifyError

__all__ = [
    "NORMALIZATIONS",
    "UnreachableBudgetError",
    "allowed_widths",
    "kept_units",
    "normalize_scores",
    "per_cost",
    "plan_dp",
    "plan_global",
    "plan_per_layer",
    "plan_per_layer_for_target",
    "removal_errors",
    "removed_cost",
]

#: per-group score normalisations before a global threshold (see :func:`normalize_scores`)
NORMALIZATIONS = ("output", "mean", "max", "none")


class UnreachableBudgetError(HfSparsifyError, ValueError):
    """No choice of widths meets the budget; the message gives the cheapest reachable cost."""


def normalize_scores(scores: torch.Tensor, method: str = "mean", output_scale: float | None = None) -> torch.Tensor:
    """Make one group's scores comparable with other groups' before a global threshold (float64).

    ``"mean"``: divide by the group's mean score; ``"max"``: by its largest; ``"none"``: unchanged; ``"output"``:
    multiply by ``output_scale`` (:func:`~hf_sparsify.structured.group_output_scale`: the mean squared norm of the
    consumer's columns, times LayerScale²), which turns per-row output variances into the variance they add to the
    residual stream the group writes to, the same unit for every layer and every kind. The order inside the group
    never changes. A ``"mean"``/``"max"`` group whose scores are all zero gets all-zero scores.
    """
    scores = scores.to(torch.float64)
    if method == "none":
        return scores
    if method == "output":
        if output_scale is None:
            raise ValueError("the 'output' normalisation needs output_scale (see group_output_scale())")
        return scores * float(output_scale)
    if method == "mean":
        scale = scores.mean()
    elif method == "max":
        scale = scores.max()
    else:
        raise ValueError(f"unknown normalisation {method!r}; use one of {list(NORMALIZATIONS)}")
    return scores / scale if scale > 0 else torch.zeros_like(scores)


def per_cost(scores: Sequence[torch.Tensor], unit_costs: Sequence[float]) -> list[torch.Tensor]:
    """Scores divided by each group's unit cost: a global threshold then removes the units that cost the least
    score per MAC (or parameter) saved, the greedy order of a knapsack. Units of zero cost keep their score."""
    return [s.to(torch.float64) / c if c > 0 else s.to(torch.float64) for s, c in zip(scores, unit_costs)]


def _per_group(value: int | Sequence[int], count: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} groups")
    return values


def allowed_widths(num_units: int, round_to: int = 8, min_keep: int = 1) -> list[int]:
    """Widths a group may be pruned to, largest first: its full width, then the multiples of ``round_to`` below it
    down to ``min_keep`` rounded up to a multiple of ``round_to`` (0 only when ``min_keep == 0``)."""
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
    """``Σ (units − width) × unit cost``: the cost the widths remove."""
    return float(sum((n - w) * c for n, w, c in zip(num_units, widths, unit_costs)))


def removal_errors(scores: torch.Tensor, widths: Sequence[int]) -> list[float]:
    """The error of each candidate width under an additive model: the sum of the scores of the units it removes
    (the ``n − width`` lowest), for :func:`plan_dp`."""
    ordered = torch.sort(scores.detach().cpu().to(torch.float64)).values
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])
    return [float(cumulative[scores.numel() - w]) for w in widths]


def _nearest(ascending: list[int], wanted: float) -> int:
    """The value of ``ascending`` nearest ``wanted`` (ties: the larger)."""
    i = bisect.bisect_left(ascending, wanted)
    candidates = ascending[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda w: (abs(w - wanted), -w))


def plan_per_layer(num_units: Sequence[int], ratio: float, round_to: int | Sequence[int] = 8, min_keep: int | Sequence[int] = 1) -> list[int]:
    """The same ratio in every group: each width is the allowed width nearest ``n·(1 − ratio)`` (ties keep more)."""
    rounds, minimums = _per_group(round_to, len(num_units), "round_to"), _per_group(min_keep, len(num_units), "min_keep")
    return [_nearest(sorted(allowed_widths(n, r, m)), n * (1.0 - ratio)) for n, r, m in zip(num_units, rounds, minimums)]


def plan_per_layer_for_target(
    num_units: Sequence[int],
    unit_costs: Sequence[float],
    target: float,
    round_to: int | Sequence[int] = 8,
    min_keep: int | Sequence[int] = 1,
    steps: int = 2000,
) -> tuple[list[int], float]:
    """The common ratio (searched on a grid of ``steps``) whose per-group widths remove a cost closest to
    ``target``; returns ``(widths, ratio)``."""
    rounds, minimums = _per_group(round_to, len(num_units), "round_to"), _per_group(min_keep, len(num_units), "min_keep")
    options = [sorted(allowed_widths(n, r, m)) for n, r, m in zip(num_units, rounds, minimums)]
    best = None
    for i in range(steps):
        ratio = i / steps
        widths = [_nearest(o, n * (1.0 - ratio)) for o, n in zip(options, num_units)]
        gap = abs(removed_cost(num_units, widths, unit_costs) - target)
        if best is None or gap < best[0] - 1e-9 * max(1.0, abs(target)):
            best = (gap, widths, ratio)
    return best[1], best[2]


def plan_global(
    scores: Sequence[torch.Tensor],
    unit_costs: Sequence[float],
    target: float,
    round_to: int | Sequence[int] = 8,
    min_keep: int | Sequence[int] = 1,
) -> list[int]:
    """One threshold across groups on comparable scores.

    Each group is removed in chunks that step between its allowed widths, lowest scores first; a chunk's threshold
    is the largest score it removes. Chunks are taken in increasing threshold order while the removed cost
    (``Σ removed units × unit cost``) gets closer to ``target``. Returns the kept width of every group.
    """
    rounds, minimums = _per_group(round_to, len(scores), "round_to"), _per_group(min_keep, len(scores), "min_keep")
    events = []
    for layer, s in enumerate(scores):
        ordered = torch.sort(s.detach().cpu().to(torch.float64), stable=True).values
        n = ordered.numel()
        widths = allowed_widths(n, rounds[layer], minimums[layer])
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


def plan_dp(costs: Sequence[Sequence[float]], errors: Sequence[Sequence[float]], budget: float, num_buckets: int = 10_000) -> list[int]:
    """Choose one option per group minimising the summed error with the summed cost within ``budget``.

    Args:
        costs: ``costs[g][i]`` ≥ 0, the cost of option ``i`` of group ``g`` (e.g. the group's MACs or measured time
            at its ``i``-th candidate width); costs need not be monotone in the width.
        errors: ``errors[g][i]``, the error of that option (e.g. :func:`removal_errors`).
        budget: the largest summed cost allowed.
        num_buckets: the budget is cut into this many buckets and every cost is rounded to the nearest bucket (as
            SPDY does). The programme also tracks each state's exact cost and returns the best state whose exact
            cost is within ``budget``: the choice never exceeds the budget, and is optimal whenever the costs are
            multiples of ``budget / num_buckets`` (otherwise up to the rounding).

    Returns:
        The chosen option index of every group. Vectorised over the buckets: ``O(groups × options × buckets)``.

    Raises:
        UnreachableBudgetError: even the cheapest options cost more than ``budget``.
    """
    if len(costs) != len(errors) or any(len(c) != len(e) or not c for c, e in zip(costs, errors)):
        raise ValueError("costs and errors need one non-empty list of options per group, of equal lengths")
    cheapest = sum(min(c) for c in costs)
    limit = budget * (1 + 1e-12)
    if budget < 0 or cheapest > limit:
        raise UnreachableBudgetError(f"the budget {budget:.6g} cannot be met: the cheapest options cost {cheapest:.6g} in total.")
    size = budget / int(num_buckets) if budget > 0 else 0.0
    capacity = int(num_buckets) + len(costs)  # rounding to the nearest bucket may add up to half a bucket per group

    def discretise(cost: float) -> int:
        if cost <= 0:
            return 0
        return capacity + 1 if size == 0 else int(round(cost / size))

    best = torch.full((capacity + 1,), float("inf"), dtype=torch.float64)  # best error using exactly t buckets
    exact = torch.zeros(capacity + 1, dtype=torch.float64)  # the exact cost of that best state
    best[0] = 0.0
    choices: list[torch.Tensor] = []
    for group_costs, group_errors in zip(costs, errors):
        new_best = torch.full_like(best, float("inf"))
        new_exact = torch.zeros_like(exact)
        choice = torch.full((capacity + 1,), -1, dtype=torch.long)
        for option, (cost, error) in enumerate(zip(group_costs, group_errors)):
            tau = discretise(float(cost))
            if tau > capacity:
                continue
            error_candidate = best[: capacity + 1 - tau] + float(error)
            exact_candidate = exact[: capacity + 1 - tau] + float(cost)
            current, current_exact = new_best[tau:], new_exact[tau:]
            better = (error_candidate < current) | ((error_candidate == current) & (exact_candidate < current_exact))
            new_best[tau:] = torch.where(better, error_candidate, current)
            new_exact[tau:] = torch.where(better, exact_candidate, current_exact)
            choice[tau:] = torch.where(better, torch.full_like(choice[tau:], option), choice[tau:])
        choices.append(choice)
        best, exact = new_best, new_exact
    feasible = torch.isfinite(best) & (exact <= limit)
    if not bool(feasible.any()):
        raise UnreachableBudgetError(f"the budget {budget:.6g} cannot be met at this resolution: raise num_buckets (cheapest total {cheapest:.6g}).")
    used = int(torch.argmin(torch.where(feasible, best, torch.full_like(best, float("inf")))))
    picked: list[int] = []
    for group_costs, choice in zip(reversed(costs), reversed(choices)):
        option = int(choice[used])
        picked.append(option)
        used -= discretise(float(group_costs[option]))
    return picked[::-1]
