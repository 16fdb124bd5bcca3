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
