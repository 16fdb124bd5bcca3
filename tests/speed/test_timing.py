"""The timing rule: interleaved rounds in rotating order, the stopping rule on the median's confidence interval
(exact binomial ranks, checked against a brute-force coverage), statistics equal to numpy's, the paired ratio."""

import math
import random

import numpy as np
import pytest

from hf_sparsify.speed.timing import Timing, TimingRule, _median_ranks, median_confidence_interval, paired_ratio, time_interleaved


def _coverage(n: int, j: int) -> float:
    """P(x_(j) ≤ median ≤ x_(n-1-j)) for n samples of a continuous distribution (0-based ranks), by summation."""
    return sum(math.comb(n, i) for i in range(j + 1, n - j)) / 2**n


@pytest.mark.parametrize("n", [6, 9, 10, 11, 20, 57, 100, 200, 777])
def test_median_ranks_are_the_narrowest_with_95_percent_coverage(n):
    j, k = _median_ranks(n)
    assert k == n - 1 - j
    assert _coverage(n, j) >= 0.95
    assert j + 1 > (n - 1) // 2 or _coverage(n, j + 1) < 0.95  # one rank narrower would not cover


def test_known_table_values_and_the_large_sample_approximation():
    assert _median_ranks(100) == (39, 60)  # the 40th and 61st order statistics
    assert _median_ranks(20) == (5, 14)
    j, k = _median_ranks(5000)
    assert abs(_coverage(5000, j) - 0.95) < 0.01 and k == 4999 - j


def test_confidence_interval_reads_the_sorted_samples():
    samples = random.Random(0).sample(range(1000), 100)
    low, high = median_confidence_interval([float(s) for s in samples])
    ordered = sorted(samples)
    assert (low, high) == (ordered[39], ordered[60])


def test_statistics_equal_numpy():
    values = [random.Random(1).random() for _ in range(37)]
    t = Timing(values)
    assert t.median == pytest.approx(np.median(values))
    assert t.p90 == pytest.approx(np.quantile(values, 0.9)) and t.p10 == pytest.approx(np.quantile(values, 0.1))
    assert t.spread == pytest.approx((np.quantile(values, 0.9) - np.quantile(values, 0.1)) / np.median(values))
    d = t.to_dict()
    assert d["repeats"] == 37 and d["median_ms"] == pytest.approx(1e3 * np.median(values), abs=1e-4)


def test_rounds_are_interleaved_in_rotating_order():
    calls = []
    rule = TimingRule(warmup=1, warmup_seconds=0, min_repeats=4, max_repeats=4)
    time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}, rule)
    timed = calls[3:]  # after one warm-up round
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]


def test_stops_at_min_repeats_when_stable_and_at_max_seconds_otherwise():
    stable = time_interleaved({"x": lambda: None}, TimingRule(warmup=1, warmup_seconds=0, min_repeats=12, precision=1e9))
    assert stable["x"].repeats == 12
    state = {"i": 0}

    def noisy():  # alternately fast and very slow: the median never settles within 0.01%
        state["i"] += 1
        if state["i"] % 2:
            sum(range(20000))

    noisy_timing = time_interleaved({"n": noisy}, TimingRule(warmup=1, warmup_seconds=0, min_repeats=3, max_repeats=10_000, precision=1e-4, max_seconds=0.3))
    assert 3 <= noisy_timing["n"].repeats < 10_000 and not noisy_timing["n"].stable(1e-4)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    a, b = Timing([2.0, 4.0, 9.0]), Timing([1.0, 1.0, 3.0])
    assert paired_ratio(a, b) == 3.0  # ratios 2, 4, 3
