"""Timing rule of every speed figure: warm-up, interleaved rounds, and a stopping rule for a stable median.

The rule (:class:`TimingRule`):

1. **Warm-up**: every callable runs ``warmup`` times (default 3) and for at least ``warmup_seconds`` (default
   0.5 s) together, untimed: lazy initialisation, allocator growth, ``torch.compile``'s compilation and ONNX
   Runtime's first-run optimisations happen there.
2. **Interleaved rounds**: each round times every callable once, in an order that rotates from round to round, so
   that a change of machine load (these machines are shared) hits every callable alike. CUDA work is synchronised
   before and after each call.
3. **Stop** when every callable has at least ``min_repeats`` (default 10) timings and the distribution-free 95%
   confidence interval of its median (order statistics at the binomial ranks, about ``n/2 ± √n``) is within ``± precision`` (default 2%)
   of the median; or at ``max_repeats`` (default 200) rounds or ``max_seconds`` (default 120 s) of timing,
   whichever comes first (``stable`` then says whether the median had settled).

A ratio of two callables timed in the same rounds is the figure that holds on a noisy machine; the paired ratio
(the median over rounds of the per-round ratios) is reported beside the ratio of medians.

```python
>>> from hf_sparsify.speed.timing import TimingRule, time_interleaved
>>> timings = time_interleaved({"sum": lambda: sum(range(10_000))}, TimingRule(min_repeats=5, max_seconds=1))
>>> timings["sum"].repeats >= 5, timings["sum"].median > 0
(True, True)
```
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

__all__ = ["Timing", "TimingRule", "median_confidence_interval", "paired_ratio", "time_interleaved"]


@dataclass
class TimingRule:
    """How long to warm up and when to stop timing (see the module docstring).

    Attributes:
        warmup: untimed calls of each callable before timing.
        warmup_seconds: the warm-up goes on until at least this long has passed.
        min_repeats: timed calls of each callable at least.
        max_repeats: timed calls of each callable at most.
        precision: stop once the 95% confidence interval of every median is within ``± precision`` of it.
        max_seconds: stop timing after this long (the warm-up is not counted).
    """

    warmup: int = 3
    warmup_seconds: float = 0.5
    min_repeats: int = 10
    max_repeats: int = 200
    precision: float = 0.02
    max_seconds: float = 120.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("warmup", "warmup_seconds", "min_repeats", "max_repeats", "precision", "max_seconds")}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    if not sorted_values:
        return float("nan")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _median_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks ``(j, n−1−j)`` of the order statistics bounding the median with at least ``confidence``: the
    largest ``j`` with ``1 − 2·P(B ≤ j) ≥ confidence`` for ``B ~ Binomial(n, ½)`` (exact up to n = 2,000, the
    normal approximation above); ``j = 0`` (the sample's range) when even that is not enough."""
    if n <= 2000:
        total = 2**n
        tail = 0  # 2^n · P(B ≤ i)
        j = 0
        for i in range((n - 1) // 2 + 1):
            tail += math.comb(n, i)
            # [x_(i), x_(n-1-i)] (0-based) misses the median with probability 2·P(B ≤ i)
            if 2 * tail > (1 - confidence) * total:
                break
            j = i
        return j, n - 1 - j
    half = 1.959963984540054 * math.sqrt(n) / 2
    j = max(0, math.floor(n / 2 - half))
    return j, n - 1 - j


def median_confidence_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free confidence interval of the median: the order statistics at the binomial ranks
    (:func:`_median_ranks`), covering the median with at least ``confidence`` whatever the distribution."""
    values = sorted(samples)
    if not values:
        return float("nan"), float("nan")
    low, high = _median_ranks(len(values), confidence)
    return values[low], values[high]


@dataclass
class Timing:
    """The timings (seconds) of one callable and their statistics."""

    samples: list[float] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p10(self) -> float:
        return _quantile(sorted(self.samples), 0.10)

    @property
    def p90(self) -> float:
        return _quantile(sorted(self.samples), 0.90)

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """``(p90 − p10) / median``: how noisy the timings were."""
        return (self.p90 - self.p10) / self.median if self.samples and self.median > 0 else float("nan")

    @property
    def confidence_interval(self) -> tuple[float, float]:
        return median_confidence_interval(self.samples)

    def stable(self, precision: float) -> bool:
        """Whether the median's 95% confidence interval is within ``± precision`` of it."""
        if len(self.samples) < 3:
            return False
        low, high = self.confidence_interval
        median = self.median
        return median > 0 and (median - low) <= precision * median and (high - median) <= precision * median

    def to_dict(self, scale: float = 1e3, digits: int = 4) -> dict[str, Any]:
        """The statistics in milliseconds (``scale=1e3``): median, p90, p10, min, the median's 95% interval,
        the spread and the number of timed calls."""
        low, high = self.confidence_interval
        return {
            "median_ms": round(self.median * scale, digits),
            "p90_ms": round(self.p90 * scale, digits),
            "p10_ms": round(self.p10 * scale, digits),
            "min_ms": round(self.min * scale, digits),
            "median_ci95_ms": [round(low * scale, digits), round(high * scale, digits)],
            "spread": round(self.spread, 4),
            "repeats": self.repeats,
        }


def _synchronizer(devices: set[torch.device]) -> Callable[[], None]:
    cuda = [d for d in devices if d.type == "cuda"]
    if not cuda:
        return lambda: None

    def synchronize() -> None:
        for device in cuda:
            torch.cuda.synchronize(device)

    return synchronize


def time_interleaved(
    callables: Mapping[str, Callable[[], Any]],
    rule: TimingRule | None = None,
    *,
    devices: set[torch.device] | None = None,
) -> dict[str, Timing]:
    """Time each callable in interleaved rounds under ``rule`` (see the module docstring).

    Args:
        callables: ``{name: fn}``; each ``fn()`` runs the work once (its result is discarded).
        devices: the devices the work runs on; CUDA devices are synchronised before and after each timed call.

    Returns:
        ``{name: Timing}`` with ``stable`` recorded on the rule's precision by :meth:`Timing.stable`.
    """
    rule = rule or TimingRule()
    synchronize = _synchronizer(set(devices or ()))
    names = list(callables)
    if not names:
        raise ValueError("time_interleaved needs at least one callable")
    start = time.perf_counter()
    done = 0
    while done < rule.warmup or time.perf_counter() - start < rule.warmup_seconds:
        for name in names:
            callables[name]()
        done += 1
        if done >= max(rule.warmup, 1) * 50:  # a very fast callable: enough warm-up
            break
    synchronize()

    timings = {name: Timing() for name in names}
    started = time.perf_counter()
    for round_index in range(rule.max_repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = callables[name]
            synchronize()
            begin = time.perf_counter()
            fn()
            synchronize()
            timings[name].samples.append(time.perf_counter() - begin)
        if round_index + 1 >= rule.min_repeats:
            if all(t.stable(rule.precision) for t in timings.values()):
                break
            if time.perf_counter() - started > rule.max_seconds:
                break
    return timings


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """The median over rounds of ``numerator[i] / denominator[i]`` (both timed in the same rounds): a ratio that
    a slow drift of the machine's load affects less than the ratio of the medians."""
    ratios = [a / b for a, b in zip(numerator.samples, denominator.samples) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")
