"""SPDY's dynamic programme and coefficient search, against brute force and synthetic timing tables."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from hf_sparsify.methods.spdy.search import (
    SPDYTargetError,
    controlled_budget,
    corrected_target,
    level_widths,
    max_speedup,
    reparametrized_errors,
    search_coefficients,
    solve_profile,
    speedup_of,
)


def brute_force(tables, coefficients, budget):
    """The least summed error within the budget over every combination of levels (slow, exact)."""
    errors = reparametrized_errors(coefficients, [len(t) for t in tables])
    best = None
    for combo in itertools.product(*[range(len(t)) for t in tables]):
        cost = sum(t[i] for t, i in zip(tables, combo))
        if cost <= budget + 1e-12:
            error = sum(e[i] for e, i in zip(errors, combo))
            if best is None or error < best - 1e-12:
                best = error
    return best


def summed_error(tables, coefficients, profile):
    errors = reparametrized_errors(coefficients, [len(t) for t in tables])
    return sum(e[i] for e, i in zip(errors, profile))


# ------------------------------------------------------------------------------------------ synthetic timing tables
def uniform_tables(layers=6, levels=5, dense=10.0, step=1.5):
    """Every layer alike: dense time, then a fixed saving per level (the reference's tables are per layer like this)."""
    return [[dense - step * i for i in range(levels)] for _ in range(layers)]


def non_monotone_tables():
    """Like the reference's rn50 ``layer1.0.conv2`` (5.9 ms dense, 10.3 ms at 40%): low levels can be slower."""
    return [[5.9, 10.3, 4.0, 2.1], [3.0, 2.5, 2.0, 1.5], [8.0, 8.5, 3.0, 2.5]]


def test_level_widths_keep_dense_and_smallest_and_thin_evenly():
    assert level_widths(12, 1, 1, 42) == list(range(12, 0, -1))
    widths = level_widths(1536, 8, 1, 42)
    assert len(widths) == 42 and widths[0] == 1536 and widths[-1] == 8
    assert all(a > b for a, b in itertools.pairwise(widths)) and all(w % 8 == 0 for w in widths)


def test_reparametrized_errors_are_quadratic_in_the_level_rank():
    errors = reparametrized_errors([2.0, 1.0], [3, 1])
    assert errors == [[0.0, 0.5, 2.0], [0.0]]


@pytest.mark.parametrize("seed", range(25))
def test_dp_equals_brute_force_on_small_random_instances(seed):
    rng = random.Random(seed)
    layers, levels = rng.randint(2, 4), rng.randint(2, 4)
    tables = [[float(rng.randint(0, 10)) for _ in range(levels)] for _ in range(layers)]
    coefficients = [rng.random() for _ in range(layers)]
    budget = float(rng.randint(int(sum(min(t) for t in tables)), int(sum(max(t) for t in tables))))
    # integer costs and a bucket of exactly 1: the discretised programme is exact
    profile = solve_profile(tables, coefficients, budget, num_buckets=max(int(budget), 10) if budget else 10)
    if budget >= 10:
        assert summed_error(tables, coefficients, profile) == pytest.approx(brute_force(tables, coefficients, budget), abs=1e-12)
    assert sum(t[i] for t, i in zip(tables, profile)) <= budget + 1e-9


@pytest.mark.parametrize("seed", range(10))
def test_dp_never_exceeds_the_budget_with_real_valued_times(seed):
    generator = torch.Generator().manual_seed(seed)
    tables = (torch.rand(5, 5, generator=generator, dtype=torch.float64) * 1e-3).tolist()  # seconds, not multiples of a bucket
    coefficients = torch.rand(5, generator=generator, dtype=torch.float64)
    low, high = sum(min(t) for t in tables), sum(max(t) for t in tables)
    budget = low + (high - low) * float(torch.rand(1, generator=generator))
    profile = solve_profile(tables, coefficients, budget, num_buckets=200)  # coarse buckets: rounding is large
    assert sum(t[i] for t, i in zip(tables, profile)) <= budget
    # and it is close to the exact optimum (the rounding error is bounded)
    assert summed_error(tables, coefficients.tolist(), profile) <= brute_force(tables, coefficients.tolist(), budget * 0.97) + 1e-12


def test_uniform_tables_give_uniform_profiles():
    tables = uniform_tables(layers=6, levels=5)
    for level in range(5):
        budget = sum(t[level] for t in tables)
        assert solve_profile(tables, [1.0] * 6, budget) == [level] * 6


def test_non_monotone_tables_skip_slower_low_levels():
    tables = non_monotone_tables()
    profile = solve_profile(tables, [1.0, 1.0, 1.0], budget=5.9 + 3.0 + 3.0)
    assert profile[2] == 2 and profile[0] == 0  # the 2nd level of groups 0 and 2 is slower than dense: never worth it


def test_first_layer_has_the_overflow_guard():
    # the first group's dense option alone exceeds the budget: the reference indexes past its table; here it is skipped
    tables = [[100.0, 5.0], [1.0, 0.5]]
    assert solve_profile(tables, [1.0, 1.0], budget=6.0) == [1, 0]


def test_unreachable_budget_is_detected():
    with pytest.raises(SPDYTargetError):
        solve_profile([[4.0, 3.0], [4.0, 3.0]], [1.0, 1.0], budget=5.0)


def test_budget_pays_for_the_uncontrolled_time():
    # a model of 10 s: two groups of 4 s, 2 s outside them (embeddings, head: what the reference's 'skip' layers are)
    tables = [[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]
    total = 10.0
    budget = controlled_budget(total, tables, target_speedup=2.0)
    assert budget == pytest.approx(3.0)  # 10/2 − 2
    profile = solve_profile(tables, [1.0, 1.0], budget)
    assert speedup_of(total, tables, profile) >= 2.0
    # the reference's formula, base/target − (base − prunable) with prunable = Σ dense = 8 − the 2 s it leaves out:
    reference_budget = total / 2.0 - (total - (8.0 + 2.0))
    optimistic = solve_profile(tables, [1.0, 1.0], reference_budget)
    assert speedup_of(total, tables, optimistic) < 2.0  # it misses the target it reports as met
    assert controlled_budget(total, tables, target_cost=6.0) == pytest.approx(4.0)


def test_max_speedup_uses_the_fastest_level_of_each_group():
    tables = non_monotone_tables()
    total = 20.0
    fastest = total - (5.9 + 3.0 + 8.0) + 2.1 + 1.5 + 2.5
    assert max_speedup(total, tables) == pytest.approx(total / fastest)
    budget = controlled_budget(total, tables, target_speedup=max_speedup(total, tables) * 1.01)
    with pytest.raises(SPDYTargetError):
        solve_profile(tables, [1.0] * 3, budget)


def test_search_evaluates_each_profile_once_and_never_returns_worse_than_c_equals_one():
    tables = uniform_tables(layers=5, levels=6)
    total = 70.0
    budget = controlled_budget(total, tables, target_speedup=1.5)
    # a made-up "true" loss: layer 0 is fragile, layer 4 robust
    weights = [5.0, 2.0, 1.0, 0.5, 0.1]
    calls = []

    def evaluate(profile):
        calls.append(tuple(profile))
        return sum(w * i * i for w, i in zip(weights, profile))

    found = search_coefficients(evaluate, lambda c: solve_profile(tables, c, budget), 5, num_random_starts=10, search_steps=60, patience=10)
    assert len(calls) == len(set(calls)) == found.evaluations
    assert found.loss < found.uniform_loss  # the search finds that layer 0 should be pruned least
    assert found.profile[0] <= found.profile[4]
    assert sum(t[i] for t, i in zip(tables, found.profile)) <= budget
    assert [loss for _, loss in found.history] == sorted((loss for _, loss in found.history), reverse=True)


def test_corrected_target_scales_by_the_gap_then_follows_the_secant():
    # one timing: the measured/predicted ratio is taken as constant (aim 1.6·1.025 = 1.64)
    assert corrected_target(1.6, [(1.6, 2.0)], 0.05) == pytest.approx(1.64 * 1.6 / 2.0)
    # two timings of a gap that grows with the pruning (the DeiT-Small case): the secant through both
    assert corrected_target(1.6, [(1.6, 2.1), (1.25, 1.37)], 0.05) == pytest.approx(1.25 + (1.64 - 1.37) * 0.35 / 0.73)
    # a secant that does not rise (noise) falls back to the last ratio
    assert corrected_target(1.6, [(1.6, 2.1), (1.25, 2.2)], 0.05) == pytest.approx(1.64 * 1.25 / 2.2)


def test_tables_rebuilt_from_the_references_resnet50_figures_reproduce_its_uniform_speedups():
    """The reference's ResNet-50 unstructured timing file gives, for uniform sparsity, 1.48× at 70.7%, 2.42× at 87.1%,
    3.18× at 94.3% and at most 4.34× (../shared/reference/methods.md §4.3). Ten identical layers holding 90% of the
    base time are given the per-layer times those speed-ups imply; the programme must find the uniform profiles back."""
    base, uncontrolled, layers = 1.0, 0.1, 10
    speedups = {0.0: 1.0, 0.707: 1.48, 0.871: 2.42, 0.943: 3.18, 0.99: 4.34}
    per_layer = [(base / s - uncontrolled) / layers for s in speedups.values()]
    tables = [list(per_layer) for _ in range(layers)]
    assert max_speedup(base, tables) == pytest.approx(4.34)
    for level, target in enumerate(speedups.values()):
        assert speedup_of(base, tables, [level] * layers) == pytest.approx(target)
        if target > 1:
            profile = solve_profile(tables, [1.0] * layers, controlled_budget(base, tables, target_speedup=target) + 1e-12)
            assert profile == [level] * layers  # the uniform level is the cheapest error that meets the speed-up
    with pytest.raises(SPDYTargetError, match="cannot be met"):  # the pruner adds the largest reachable speed-up
        solve_profile(tables, [1.0] * layers, controlled_budget(base, tables, target_speedup=4.5))
