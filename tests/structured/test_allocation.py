"""The allocators of the structured core against brute force and hand-computed cases."""

import itertools

import pytest
import torch

from hf_sparsify.structured import (
    allowed_widths,
    kept_units,
    normalize_scores,
    output_scale,
    plan_global,
    plan_per_layer,
    plan_per_layer_for_target,
    removed_cost,
)


def test_normalize_scores_keeps_the_order_inside_a_layer():
    v = torch.tensor([4.0, 1.0, 3.0, 0.0])
    torch.testing.assert_close(normalize_scores(v, "mean"), v.double() / 2.0)
    torch.testing.assert_close(normalize_scores(v, "max"), v.double() / 4.0)
    torch.testing.assert_close(normalize_scores(v, "none"), v.double())
    assert torch.equal(normalize_scores(torch.zeros(3), "mean"), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="normalisation"):
        normalize_scores(v, "median")


def test_allowed_widths():
    assert allowed_widths(32, 8, 1) == [32, 24, 16, 8]
    assert allowed_widths(30, 8, 1) == [30, 24, 16, 8]  # the full width stays allowed
    assert allowed_widths(32, 8, 0) == [32, 24, 16, 8, 0]
    assert allowed_widths(32, 8, 9) == [32, 24, 16]  # min 9 rounds up to 16
    assert allowed_widths(5, 1, 3) == [5, 4, 3]
    assert allowed_widths(8, 8, 20) == [8]  # nothing may be removed


def test_kept_units_are_the_largest_scores_with_stable_ties():
    scores = torch.tensor([0.5, 0.0, 2.0, 0.0, 1.0])
    assert kept_units(scores, 3).tolist() == [0, 2, 4]
    assert kept_units(scores, 4).tolist() == [0, 2, 3, 4]  # tie 0.0: the lower index (1) goes first
    assert kept_units(scores, 0).tolist() == []


def test_plan_per_layer_rounds_to_the_nearest_allowed_width():
    assert plan_per_layer([64, 64, 40], 0.5, round_to=8) == [32, 32, 24]  # 40 * 0.5 = 20 -> 24 (tie keeps more)
    assert plan_per_layer([64], 0.99, round_to=8, min_keep=1) == [8]
    assert plan_per_layer([64], 0.99, round_to=8, min_keep=0) == [0]
    assert plan_per_layer([64], 0.0, round_to=8) == [64]


def _brute_force_global(scores, target):
    """Every threshold t: remove the units with score <= t; the count closest to target (ties: fewer)."""
    all_scores = sorted(set(torch.cat(scores).tolist()))
    best = (abs(0 - target), 0, [s.numel() for s in scores])
    for t in all_scores:
        kept = [int((s > t).sum()) for s in scores]
        removed = sum(s.numel() for s in scores) - sum(kept)
        if abs(removed - target) < best[0]:
            best = (abs(removed - target), removed, kept)
    return best[2]


@pytest.mark.parametrize("seed,target", list(itertools.product(range(4), (3, 10, 17))))
def test_plan_global_is_one_threshold_across_layers(seed, target):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(n, generator=g, dtype=torch.float64) * scale for n, scale in ((8, 1.0), (12, 3.0), (6, 0.5))]
    assert plan_global(scores, [1.0, 1.0, 1.0], target, round_to=1, min_keep=0) == _brute_force_global(scores, target)


def test_plan_global_with_rounding_and_costs():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(64, generator=g, dtype=torch.float64), torch.rand(64, generator=g, dtype=torch.float64) + 0.5]
    widths = plan_global(scores, [1.0, 1.0], 48, round_to=8, min_keep=8)
    assert all(w % 8 == 0 and w >= 8 for w in widths)
    assert sum(64 - w for w in widths) == 48
    assert widths[0] < widths[1]  # the low-score layer loses more
    # costs: a unit of layer 1 costs 4x; the MAC budget is reached with fewer removed units there
    cost_widths = plan_global(scores, [1.0, 4.0], 96, round_to=8, min_keep=8)
    assert abs(removed_cost([64, 64], cost_widths, [1.0, 4.0]) - 96) <= 32 / 2  # within half a chunk of the last layer


def test_plan_per_layer_for_target():
    widths, ratio = plan_per_layer_for_target([64, 64, 128], [1.0, 1.0, 2.0], target=0.5 * (64 + 64 + 256), round_to=8)
    assert widths == [32, 32, 64] == plan_per_layer([64, 64, 128], ratio, round_to=8)


def test_output_normalisation_uses_the_fc2_columns_and_layer_scale():
    w2 = torch.tensor([[1.0, 0.0], [2.0, 3.0]])  # squared column norms 5 and 9 -> mean 7
    assert output_scale(w2) == pytest.approx(7.0)
    gamma = torch.tensor([0.5, 1.0])  # rows scaled: columns become [0.5, 2] and [0, 3] -> 4.25 and 9
    assert output_scale(w2, gamma) == pytest.approx((4.25 + 9.0) / 2)
    v = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(normalize_scores(v, "output", output_scale=7.0), v.double() * 7.0)
    with pytest.raises(ValueError, match="output_scale"):
        normalize_scores(v, "output")


def test_round_to_and_min_keep_per_group():
    # a head group (round 1, at least 1) beside a neuron group (round 8, at least 8)
    assert plan_per_layer([4, 64], 0.5, round_to=[1, 8], min_keep=[1, 8]) == [2, 32]
    assert plan_per_layer([4, 64], 0.99, round_to=[1, 8], min_keep=[1, 8]) == [1, 8]
    widths = plan_global([torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.rand(64, dtype=torch.float64) + 1], [1.0, 1.0], 10, round_to=[1, 8], min_keep=[2, 8])
    assert widths[0] == 2  # the whole low-score head group goes down to its minimum of 2 ...
    assert widths[1] == 56  # ... and the rest of the budget is the nearest chunk of 8 neurons
    with pytest.raises(ValueError, match="round_to has 1 entries for 2 groups"):
        plan_per_layer([4, 64], 0.5, round_to=[1])


def test_per_cost_ranks_by_score_per_unit_cost():
    from hf_sparsify.structured import per_cost

    scores = [torch.tensor([1.0, 2.0]), torch.tensor([1.5, 3.0])]
    ranked = per_cost(scores, [1.0, 10.0])
    assert [s.tolist() for s in ranked] == [[1.0, 2.0], [0.15, 0.3]]
    # by raw score the two lowest scores go (cost 11 for a target of 10); per cost, the expensive unit alone (cost 10)
    assert plan_global(scores, [1.0, 10.0], 10, round_to=1, min_keep=0) == [1, 1]
    assert plan_global(ranked, [1.0, 10.0], 10, round_to=1, min_keep=0) == [2, 1]
    assert plan_global(scores, [1.0, 10.0], 1, round_to=1, min_keep=0) == [1, 2]
    assert plan_global(ranked, [1.0, 10.0], 1, round_to=1, min_keep=0) == [2, 2]  # removing the 10-cost unit overshoots


def test_removal_errors_are_sums_of_the_lowest_scores():
    from hf_sparsify.structured import removal_errors

    scores = torch.tensor([0.5, 0.1, 0.3, 0.2])
    assert removal_errors(scores, [4, 3, 2, 0]) == pytest.approx([0.0, 0.1, 0.3, 1.1])


# ------------------------------------------------------------------------------------------------ dynamic programme
def _brute_force_dp(costs, errors, budget):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(c[i] for c, i in zip(costs, choice))
        error = sum(e[i] for e, i in zip(errors, choice))
        if cost <= budget and (best is None or error < best[0] - 1e-12):
            best = (error, choice)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_plan_dp_equals_brute_force_and_never_exceeds_the_budget(seed):
    from hf_sparsify.structured import plan_dp

    g = torch.Generator().manual_seed(seed)
    layers, options = 2 + seed % 3, 2 + seed % 4
    # integer costs (non-monotone, as measured timings are) and random errors: the discretisation is then exact
    costs = [torch.randint(0, 20, (options,), generator=g).double().tolist() for _ in range(layers)]
    errors = [torch.rand(options, generator=g, dtype=torch.float64).tolist() for _ in range(layers)]
    budget = float(sum(min(c) for c in costs) + torch.randint(0, 25, (1,), generator=g).item())
    picked = plan_dp(costs, errors, budget, num_buckets=int(budget) if budget >= 1 else 1)
    assert sum(c[i] for c, i in zip(costs, picked)) <= budget
    assert sum(e[i] for e, i in zip(errors, picked)) == pytest.approx(_brute_force_dp(costs, errors, budget)[0], abs=1e-12)


def test_plan_dp_with_fractional_costs_stays_within_the_budget():
    from hf_sparsify.structured import plan_dp

    g = torch.Generator().manual_seed(0)
    costs = [(torch.rand(6, generator=g, dtype=torch.float64) * 3).tolist() for _ in range(5)]
    errors = [torch.rand(6, generator=g, dtype=torch.float64).tolist() for _ in range(5)]
    for budget in (4.0, 6.5, 9.0):
        picked = plan_dp(costs, errors, budget, num_buckets=20_000)
        assert sum(c[i] for c, i in zip(costs, picked)) <= budget
        exact = _brute_force_dp(costs, errors, budget)[0]
        assert sum(e[i] for e, i in zip(errors, picked)) <= exact + 0.05  # optimal up to the bucket rounding


def test_plan_dp_reproduces_uniform_choices_from_uniform_tables():
    from hf_sparsify.structured import plan_dp

    costs = [[4.0, 3.0, 2.0, 1.0]] * 6  # every layer alike: width 4..1, error grows as the width shrinks
    errors = [[0.0, 1.0, 3.0, 6.0]] * 6
    assert plan_dp(costs, errors, budget=18.0) == [1] * 6
    assert plan_dp(costs, errors, budget=12.0) == [2] * 6


def test_plan_dp_refuses_an_unreachable_budget():
    from hf_sparsify.structured import UnreachableBudgetError, plan_dp

    with pytest.raises(UnreachableBudgetError, match="cheapest options cost 3 in total"):
        plan_dp([[2.0, 1.0], [3.0, 2.0]], [[0.0, 1.0], [0.0, 1.0]], budget=2.5)
    assert plan_dp([[2.0, 0.0], [3.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]], budget=0.0) == [1, 1]
