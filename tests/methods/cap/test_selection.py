"""One global threshold on cumulative block loss, per-layer counts, exact totals, N:M groups; and the whole
CAP/WoodFisher math on several layers against the oracles."""

import numpy as np
import pytest
import torch

from hf_sparsify.methods.cap.elimination import greedy_eliminate, replay
from hf_sparsify.methods.cap.inverse import block_fisher_inverse
from hf_sparsify.methods.cap.selection import nm_remove_mask, num_to_remove, select_counts
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
