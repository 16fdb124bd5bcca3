"""One global threshold on cumulative block loss, per-layer counts, exact totals, N:M groups; and the whole
CAP/WoodFisher math on several layers against the oracles."""

import numpy as np
import pytest
import torch

from hf_sparsify.methods.cap.elimination import greedy_eliminate, replay
from hf_sparsify.methods.cap.inverse import block_fisher_inverse
from hf_sparsify.methods.cap.selection import forced_scores, kept_threshold, nm_remove_mask, num_to_remove, select_counts
from hf_sparsify.methods.cap.woodfisher import woodfisher_saliency, woodfisher_update
from hf_sparsify.surgery import lowest_k_masks
from tests import oracles
from tests.methods.cap.helpers import random_problem, rel_err

DAMP = 1e-3


def _layers():
    """Three layers of different block counts and sizes (with already-zero weights)."""
    out = []
    for seed, (n, b) in enumerate([(4, 8), (6, 8), (3, 12)]):
        w, grads, sums = random_problem(num_blocks=n, block=b, num_grads=20, seed=seed)
        hinv, _ = block_fisher_inverse(sums.clone(), 20, DAMP)
        fishers = np.stack([oracles.damped_fisher(grads[:, i], DAMP) for i in range(n)])
        out.append((w, hinv, fishers))
    return out


def _cap(layers, num_remove):
    elims = [greedy_eliminate(torch.from_numpy(w), h.clone()) for w, h, _ in layers]
    if isinstance(num_remove, int):
        counts = select_counts([e.cumloss for e in elims], [e.num_forced for e in elims], num_remove)
    else:
        counts = [select_counts([e.cumloss], [e.num_forced], k)[0] for e, k in zip(elims, num_remove)]
    return [replay(torch.from_numpy(w), h, e.order, c) for (w, h, _), e, c in zip(layers, elims, counts)], counts


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_global_cap_equals_the_oracle(fraction):
    layers = _layers()
    total = sum(w.size for w, _, _ in layers)
    k = num_to_remove(total, fraction, sum(int((w == 0).sum()) for w, _, _ in layers))
    got, counts = _cap(layers, k)
    expected = oracles.cap_prune_layers([(w, f) for w, _, f in layers], k)
    assert sum(int(c.sum()) for c in counts) == k
    assert sum(int((g == 0).sum()) for g in got) == k  # the exact target count
    for g, e in zip(got, expected):
        assert rel_err(g.numpy(), e) < 1e-5
    # layers end up with different sparsities (the threshold is shared, not the level)
    assert len({round(float((g == 0).float().mean()), 3) for g in got}) > 1


def test_uniform_cap_equals_the_oracle_per_layer():
    layers = _layers()
    ks = [num_to_remove(w.size, 0.6, int((w == 0).sum())) for w, _, _ in layers]
    got, _ = _cap(layers, ks)
    expected = oracles.cap_prune_layers([(w, f) for w, _, f in layers], ks)
    for g, e, k in zip(got, expected, ks):
        assert rel_err(g.numpy(), e) < 1e-5 and int((g == 0).sum()) == k


def test_already_pruned_weights_stay_pruned_even_below_the_target():
    layers = _layers()
    already = sum(int((w == 0).sum()) for w, _, _ in layers)
    assert num_to_remove(100, 0.0, already) == already
    got, _ = _cap(layers, already)
    for g, (w, _, _) in zip(got, layers):
        assert torch.equal(g == 0, torch.from_numpy(w == 0))


def test_counts_are_prefixes_with_ties_in_layer_block_step_order():
    cum = torch.tensor([[0.0, 1.0, 1.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    counts = select_counts([cum], [torch.tensor([1, 0])], 4)
    assert counts[0].tolist() == [3, 1]  # the -inf/0 step, then the ties at 1.0 in flat order
    oracle = oracles.global_counts([[c.tolist() for c in cum]], [[1, 0]], 4)
    assert oracle == [[3, 1]]


def test_global_woodfisher_equals_the_oracle():
    layers = _layers()
    total = sum(w.size for w, _, _ in layers)
    k = num_to_remove(total, 0.5, 0)
    scores = [woodfisher_saliency(torch.from_numpy(w), h).masked_fill(torch.from_numpy(w == 0), float("-inf")) for w, h, _ in layers]
    keeps = lowest_k_masks(scores, k)
    got = [woodfisher_update(torch.from_numpy(w), h, ~keep) for (w, h, _), keep in zip(layers, keeps)]
    expected = oracles.woodfisher_prune_layers([(w, f) for w, _, f in layers], k)
    for g, e in zip(got, expected):
        assert rel_err(g.numpy(), e) < 1e-5


def test_nm_remove_mask_takes_the_lowest_per_group_and_keeps_forced():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.7, 9.0, 8.0]])
    forced = torch.zeros_like(scores, dtype=torch.bool)
    forced[0, 6] = True
    remove = nm_remove_mask(scores, 4, 2, forced)
    assert remove.tolist() == [[False, True, False, True, True, False, True, False]]


def test_kept_threshold_is_the_largest_removed_score():
    cum = torch.tensor([[0.0, 1.0, 1.0, 2.0], [1.0, 1.5, 3.0, 3.0], [0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    forced = torch.tensor([1, 0, 4])
    for k in (6, 7, 8, 9):
        counts = select_counts([cum], [forced], k)
        scores = forced_scores(cum, forced)
        keep = lowest_k_masks([scores], k)[0]
        removed = scores[~keep]
        expected = removed[torch.isfinite(removed)].max().item()
        assert kept_threshold([cum], [forced], counts) == expected
    assert kept_threshold([cum], [forced], select_counts([cum], [forced], 7)) == 1.0
    assert kept_threshold([cum], [forced], select_counts([cum], [forced], 5)) is None  # the forced steps only
    only_forced = select_counts([cum[2:]], [forced[2:]], 4)
    assert kept_threshold([cum[2:]], [forced[2:]], only_forced) is None


def test_woodfisher_saliencies_keep_float64():
    # issue 12.2: saliencies were returned in float32, so near-equal ones tied and were ranked by position
    w = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)
    hinv = torch.eye(2, dtype=torch.float64)[None]
    scores = woodfisher_saliency(w, hinv)
    assert scores.dtype == torch.float64 and scores[0, 0] < scores[0, 1]
    assert lowest_k_masks([scores.flip(1)], 1)[0].tolist() == [[True, False]]
