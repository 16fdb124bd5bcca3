import pytest
import torch

from hf_sparsify.surgery import apply_masks, check_nm, lowest_k_masks, masks_from_weights, nm_mask


def test_lowest_k_is_exact_and_global():
    a = torch.tensor([[0.1, 5.0], [3.0, 0.2]])
    b = torch.tensor([0.05, 4.0, 0.3])
    ma, mb = lowest_k_masks([a, b], 3)
    assert ma.tolist() == [[False, True], [True, False]] and mb.tolist() == [False, True, True]
    assert sum(int((~m).sum()) for m in lowest_k_masks([a, b], 5)) == 5


def test_lowest_k_breaks_ties_by_position_for_an_exact_count():
    scores = [torch.zeros(10), torch.zeros(6)]
    masks = lowest_k_masks(scores, 7)
    assert int((~masks[0]).sum()) == 7 and bool(masks[1].all())
    with pytest.raises(ValueError):
        lowest_k_masks(scores, 17)


def test_nm_mask_linear_keeps_n_per_group_along_inputs():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    mask = nm_mask(w.abs(), 2, 4)
    groups = mask.reshape(6, 4, 4)
    assert (groups.sum(-1) == 2).all()
    # the kept ones are the two largest magnitudes of each group
    kept = w.abs().reshape(6, 4, 4).topk(2, dim=-1).indices.sort(-1).values
    assert torch.equal(groups.nonzero()[:, -1].reshape(6, 4, 2), kept)


def test_nm_mask_conv_groups_along_input_channels():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 2, 2)
    mask = nm_mask(w.abs(), 2, 4)
    assert mask.shape == w.shape
    per_group = mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1)
    assert (per_group == 2).all()


def test_check_nm_and_apply():
    with pytest.raises(ValueError, match="not a multiple of M=4"):
        check_nm((4, 6), 4, "fc")
    w = torch.randn(4, 8)
    masks = [w.abs() > 0.5]
    apply_masks([w], masks)
    assert torch.equal(masks_from_weights([w])[0], masks[0])


def test_lowest_k_ranks_float64_scores_in_float64():
    # issue 12.2: scores within float32's 6e-8 relative spacing were rounded to equal values and ranked by position
    base = 1.0
    scores = [torch.tensor([base + 4e-12, base + 3e-12], dtype=torch.float64), torch.tensor([base + 1e-12, base + 2e-12], dtype=torch.float64)]
    masks = lowest_k_masks(scores, 2)
    assert masks[0].tolist() == [True, True] and masks[1].tolist() == [False, False]
    masks = lowest_k_masks(scores, 3)
    assert masks[0].tolist() == [True, False] and masks[1].tolist() == [False, False]
    # mixed precisions rank in the widest one
    mixed = lowest_k_masks([torch.tensor([1.0 + 1e-12], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float32)], 1)
    assert mixed[0].tolist() == [True] and mixed[1].tolist() == [False]
