"""SPDY's dynamic programme and local search as plain functions on lists and tensors (no model in sight).

* :func:`level_widths`: the widths a group may take (dense first), at most ``num_levels`` of them;
* :func:`reparametrized_errors`: the error model ``e_l(i) = c_l·(i/(n_l − 1))²`` of level ``i`` of group ``l``;
* :func:`controlled_budget` / :func:`max_speedup`: the budget of the groups' summed time for a speed-up target,
  with the time no group controls **included** (the reference leaves it out, see docs/spdy.md), and the largest
  speed-up the tables allow;
* :func:`solve_profile`: one level per group minimising the summed error with the summed time within the budget
  (:func:`hf_sparsify.structured.plan_dp`, vectorised over the time buckets, never over budget);
* :func:`search_coefficients`: random starts, then mutation of a few coefficients at a time, resampled with
  replacement, as the reference's ``SPDY.search``; every distinct profile is scored once.

```python
>>> from hf_sparsify.methods.spdy.search import controlled_budget, max_speedup, solve_profile
>>> tables = [[4.0, 3.0, 1.0], [4.0, 2.0, 1.0]]          # seconds of two groups at three widths each
>>> total = 10.0                                          # the whole model: 2 s outside the groups
>>> round(max_speedup(total, tables), 3)                  # 10 / (2 + 1 + 1)
2.5
>>> budget = controlled_budget(total, tables, target_speedup=1.5)   # 10/1.5 − 2
>>> solve_profile(tables, [1.0, 1.0], budget)             # levels 1 + 1 would take 5 s: one group goes further
[2, 1]
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...structured.allocation import UnreachableBudgetError, allowed_widths, plan_dp
from .config import SPDYTargetError

__all__ = [
    "SPDYTargetError",
    "SearchResult",
    "controlled_budget",
    "corrected_target",
    "level_widths",
    "max_speedup",
    "reparametrized_errors",
    "search_coefficients",
    "search_profile",
    "solve_profile",
    "speedup_of",
]


def level_widths(num_units: int, round_to: int = 8, min_keep: int = 1, num_levels: int = 42) -> list[int]:
    """The widths a group may take, dense first then decreasing: the allowed widths
    (:func:`~hf_sparsify.structured.allowed_widths`: multiples of ``round_to``, at least ``min_keep``) thinned to
    at most ``num_levels`` evenly spread ones; the dense and the smallest width are always kept."""
    widths = allowed_widths(num_units, round_to, min_keep)
    if len(widths) <= num_levels:
        return widths
    picks = sorted({round(k * (len(widths) - 1) / (num_levels - 1)) for k in range(num_levels)})
    return [widths[i] for i in picks]


def reparametrized_errors(coefficients: Sequence[float] | torch.Tensor, num_levels: Sequence[int]) -> list[list[float]]:
    """``errors[l][i] = c_l·(i/(n_l − 1))²``: SPDY's error model of level ``i`` (0 = dense) of group ``l``, with
    ``n_l`` levels (a group with a single level has error 0)."""
    coefficients = [float(c) for c in coefficients]
    if len(coefficients) != len(num_levels):
        raise ValueError(f"{len(coefficients)} coefficients for {len(num_levels)} groups")
    return [[c * (i / (n - 1)) ** 2 if n > 1 else 0.0 for i in range(n)] for c, n in zip(coefficients, num_levels)]


def _uncontrolled(total: float, tables: Sequence[Sequence[float]]) -> float:
    """The time no group controls: the whole model's minus the groups' dense (level 0) times."""
    return total - sum(float(t[0]) for t in tables)


def controlled_budget(total: float, tables: Sequence[Sequence[float]], *, target_speedup: float | None = None, target_cost: float | None = None) -> float:
    """The summed group time allowed for ``target_speedup`` (or an absolute ``target_cost`` of the whole model):
    ``total / target − (total − Σ_l t_l(dense))``. The reference computes ``base/target − (base − prunable)`` with
    ``prunable`` counting layers its programme does not control, which makes its budget (and printed speed-up)
    optimistic; here every second outside the groups is paid from the budget."""
    if (target_speedup is None) == (target_cost is None):
        raise ValueError("give target_speedup or target_cost")
    wanted = total / float(target_speedup) if target_speedup is not None else float(target_cost)
    return wanted - _uncontrolled(total, tables)


def max_speedup(total: float, tables: Sequence[Sequence[float]]) -> float:
    """The largest speed-up the tables allow: every group at its cheapest level (levels need not get cheaper
    with width: measured times are not monotone)."""
    fastest = _uncontrolled(total, tables) + sum(min(float(x) for x in t) for t in tables)
    return total / fastest if fastest > 0 else math.inf


def speedup_of(total: float, tables: Sequence[Sequence[float]], levels: Sequence[int]) -> float:
    """The predicted speed-up of one level per group: ``total / (uncontrolled + Σ_l t_l(level_l))``."""
    time = _uncontrolled(total, tables) + sum(float(t[i]) for t, i in zip(tables, levels))
    return total / time if time > 0 else math.inf


def corrected_target(target: float, timed: Sequence[tuple[float, float]], tolerance: float = 0.05) -> float:
    """The predicted speed-up to solve for next, from ``timed`` = ``[(predicted, measured), ...]`` speed-ups of the
    profiles timed so far, aiming at a measured ``target·(1 + tolerance/2)``.

    With one point the measured/predicted ratio is taken as constant; with two or more, the last two points
    (distinct predictions, measured increasing with predicted) give a secant, since the ratio itself drifts with
    how much is pruned (blocks timed alone under-predict large savings more than small ones).
    """
    aim = target * (1 + tolerance / 2)
    (p1, m1) = timed[-1]
    if len(timed) >= 2:
        (p0, m0) = timed[-2]
        if p1 != p0 and (m1 - m0) / (p1 - p0) > 0:
            return p1 + (aim - m1) * (p1 - p0) / (m1 - m0)
    return aim * p1 / m1


def solve_profile(tables: Sequence[Sequence[float]], coefficients: Sequence[float] | torch.Tensor, budget: float, num_buckets: int = 10_000) -> list[int]:
    """One level per group minimising ``Σ_l c_l·(i_l/(n_l − 1))²`` with ``Σ_l tables[l][i_l] ≤ budget``.

    The dynamic programme of :func:`~hf_sparsify.structured.plan_dp` (time discretised into ``num_buckets``
    buckets of the budget, vectorised over them), which also tracks every state's exact time: no option that alone
    exceeds the budget is ever taken (the first group included, where the reference has no guard) and the answer
    never exceeds the budget even after rounding.

    Raises:
        SPDYTargetError: even the fastest levels exceed ``budget``.
    """
    errors = reparametrized_errors(coefficients, [len(t) for t in tables])
    try:
        return plan_dp([[float(x) for x in t] for t in tables], errors, float(budget), num_buckets)
    except UnreachableBudgetError as err:
        raise SPDYTargetError(str(err)) from None


@dataclass
class SearchResult:
    """What :func:`search_coefficients` found.

    Attributes:
        coefficients: the best coefficient vector ``c``; ``profile``: its levels; ``loss``: its calibration loss.
        uniform_profile, uniform_loss: the profile of ``c = 1`` (every group weighted alike) and its loss.
        candidates: coefficient vectors solved; ``evaluations``: distinct profiles scored (the expensive part).
        history: ``(candidate index, loss)`` of every improvement, in order.
    """

    coefficients: list[float]
    profile: list[int]
    loss: float
    uniform_profile: list[int]
    uniform_loss: float
    candidates: int = 0
    evaluations: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)


def search_coefficients(
    evaluate: Callable[[list[int]], float],
    solve: Callable[[torch.Tensor], list[int]],
    num_layers: int,
    *,
    num_random_starts: int = 100,
    search_steps: int = 1000,
    patience: int = 100,
    mutation_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """SPDY's search over the per-layer error coefficients.

    1. ``c = 1`` is solved and scored (the baseline, and a candidate);
    2. ``num_random_starts`` vectors ``c ~ U[0, 1]^L``; the best is kept;
    3. local search: for ``k`` from ``round(mutation_fraction·L)`` down to 1, resample ``k`` coordinates drawn
       **with replacement** from ``U(0, 1)``; the first improvement is accepted and the trial count restarts;
       after ``patience`` trials without improvement ``k`` decreases. At most ``search_steps`` candidates.

    Args:
        evaluate: the calibration loss of a profile (one level per layer); called once per distinct profile.
        solve: the profile of a coefficient vector (:func:`solve_profile` with the tables and budget bound).
        generator: the random source (seeded by the caller).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    scored: dict[tuple[int, ...], float] = {}
    counts = {"candidates": 0}

    def score(c: torch.Tensor) -> tuple[float, list[int]]:
        counts["candidates"] += 1
        profile = tuple(int(i) for i in solve(c))
        if profile not in scored:
            scored[profile] = float(evaluate(list(profile)))
        return scored[profile], list(profile)

    uniform = torch.ones(num_layers, dtype=torch.float64)
    uniform_loss, uniform_profile = score(uniform)
    best_c, best_loss, best_profile = uniform, uniform_loss, uniform_profile
    history: list[tuple[int, float]] = [(0, uniform_loss)]

    def consider(c: torch.Tensor) -> bool:
        nonlocal best_c, best_loss, best_profile
        loss, profile = score(c)
        if loss < best_loss:
            best_c, best_loss, best_profile = c, loss, profile
            history.append((counts["candidates"] - 1, loss))
            return True
        return False

    for _ in range(num_random_starts):
        consider(torch.rand(num_layers, generator=generator, dtype=torch.float64))
    steps = 0
    k = max(1, round(mutation_fraction * num_layers))
    while k >= 1 and steps < search_steps:
        trials = 0
        while trials < patience and steps < search_steps:
            candidate = best_c.clone()
            picked = torch.randint(0, num_layers, (k,), generator=generator)  # with replacement, as the reference
            candidate[picked] = torch.rand(k, generator=generator, dtype=torch.float64)
            steps += 1
            trials = 0 if consider(candidate) else trials + 1
        k -= 1
    return SearchResult(
        coefficients=[float(c) for c in best_c],
        profile=best_profile,
        loss=best_loss,
        uniform_profile=uniform_profile,
        uniform_loss=uniform_loss,
        candidates=counts["candidates"],
        evaluations=len(scored),
        history=history,
    )


def search_profile(config, evaluate: Callable[[list[int]], float], tables: Sequence[Sequence[float]], budget: float) -> SearchResult:
    """:func:`search_coefficients` with the dynamic programme of ``tables`` within ``budget`` and the search settings
    of an :class:`~hf_sparsify.SPDYConfig` (``num_buckets``, ``num_random_starts``, ``search_steps``,
    ``patience``, ``mutation_fraction``, ``seed``): the search both SPDY flows (widths and sparsity levels) run."""

    def solve(coefficients: torch.Tensor) -> list[int]:
        return solve_profile(tables, coefficients, budget, config.num_buckets)

    return search_coefficients(
        evaluate, solve, len(tables),
        num_random_starts=config.num_random_starts, search_steps=config.search_steps, patience=config.patience,
        mutation_fraction=config.mutation_fraction, generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip
