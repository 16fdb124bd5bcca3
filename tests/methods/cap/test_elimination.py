"""CAP's vectorised greedy OBS elimination and its replay equal the one-weight-at-a-time float64 oracle."""

import numpy as np
import pytest
import torch

from hf_sparsify.methods.cap.elimination import greedy_eliminate, replay
from hf_sparsify.methods.cap.inverse import block_fisher_inverse
from tests import oracles
from tests.methods.cap.helpers import random_problem, rel_err

DAMP = 1e-3


def _problem(seed=0, **kwargs):
    w, grads, sums = random_problem(seed=seed, **kwargs)
    hinv, _ = block_fisher_inverse(sums.clone(), grads.shape[0], DAMP)
    fishers = [oracles.damped_fisher(grads[:, b], DAMP) for b in range(w.shape[0])]
    return w, hinv, fishers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_and_cumulative_losses_equal_the_oracle(seed):
    w, hinv, fishers = _problem(seed)
    result = greedy_eliminate(torch.from_numpy(w), hinv.clone())
    assert result.breakdowns == 0
    for b, fisher in enumerate(fishers):
        order, cumloss, _ = oracles.obs_eliminate(w[b], fisher, w[b] == 0)
        assert result.order[b].tolist() == order
        assert rel_err(result.cumloss[b].numpy(), cumloss) < 1e-5
        assert result.num_forced[b].item() == int((w[b] == 0).sum())
    # zeros come first at no cost, and the cumulative loss never decreases
    assert (result.cumloss[0, :2] == 0).all() and (result.cumloss[2] == 0).all()
    assert (result.cumloss.diff(dim=1) >= 0).all()


def test_replay_equals_the_oracle_trace_at_any_count():
    w, hinv, fishers = _problem(3, num_blocks=8, block=12)
    result = greedy_eliminate(torch.from_numpy(w), hinv.clone())
    rng = np.random.default_rng(0)
    for _ in range(3):
        counts = torch.from_numpy(np.maximum(rng.integers(0, 13, size=8), (w == 0).sum(1)))
        new = replay(torch.from_numpy(w), hinv, result.order, counts)
        for b, fisher in enumerate(fishers):
            _, _, traces = oracles.obs_eliminate(w[b], fisher, w[b] == 0)
            assert rel_err(new[b].numpy(), traces[int(counts[b])]) < 1e-5
            assert int((new[b] == 0).sum()) == int(counts[b])


def test_replay_of_the_cumulative_loss_is_the_joint_obs_loss():
    # ½ w_Qᵀ (H⁻¹_QQ)⁻¹ w_Q of the first k removed weights is the k-th cumulative loss
    w, hinv, _ = _problem(4, zeros=False)
    result = greedy_eliminate(torch.from_numpy(w), hinv.clone())
    for b in range(w.shape[0]):
        for k in (1, 4, 8):
            q = result.order[b, :k]
            h = hinv[b][q][:, q]
            wq = torch.from_numpy(w[b])[q]
            joint = 0.5 * wq @ torch.linalg.solve(h, wq)
            assert joint.item() == pytest.approx(result.cumloss[b, k - 1].item(), rel=1e-8)


@pytest.mark.parametrize("m, quota", [(4, 2), (4, 1), (8, 4)])
def test_nm_groups_are_honoured_with_obs_updates_inside(m, quota):
    w, hinv, fishers = _problem(5, block=16)
    result = greedy_eliminate(torch.from_numpy(w), hinv.clone(), nm=(m, quota))
    for b, fisher in enumerate(fishers):
        order, cumloss, traces = oracles.obs_eliminate(w[b], fisher, w[b] == 0, nm=(m, quota))
        steps = int(result.num_steps[b])
        assert result.order[b, :steps].tolist() == order and (result.order[b, steps:] == -1).all()
        assert rel_err(result.weights[b].numpy(), traces[-1]) < 1e-5
        kept = (result.weights[b] != 0).reshape(-1, m).sum(1)
        assert (kept <= m - quota).all()


def test_float32_compute_matches_float64_on_a_well_conditioned_problem():
    w, hinv, fishers = _problem(6, zeros=True, num_grads=64)
    exact = greedy_eliminate(torch.from_numpy(w), hinv.clone())
    single = greedy_eliminate(torch.from_numpy(w).float(), hinv.float())
    assert torch.equal(exact.order, single.order)
    assert rel_err(single.cumloss.numpy(), exact.cumloss.numpy()) < 1e-4


def test_explicit_pruned_mask_and_inputs_untouched():
    w, hinv, _ = _problem(7, zeros=False)
    weights = torch.from_numpy(w)
    before = weights.clone()
    pruned = torch.zeros_like(weights, dtype=torch.bool)
    pruned[:, 0] = True
    result = greedy_eliminate(weights, hinv.clone(), pruned)
    assert torch.equal(weights, before)
    assert (result.order[:, 0] == 0).all() and (result.num_forced == 1).all()


@pytest.mark.parametrize("lazy", [1, 5, 32])
@pytest.mark.parametrize("nm", [None, (4, 2)])
def test_lazy_downdates_give_the_order_and_losses_of_rank_one_updates(lazy, nm):
    # the downdates are gathered `lazy` steps at a time: the same path as one rank-1 update per step
    w, grads, sums = random_problem(num_blocks=5, block=40, num_grads=60, seed=7)
    hinv, _ = block_fisher_inverse(sums.clone(), grads.shape[0], DAMP)
    eager = greedy_eliminate(torch.from_numpy(w), hinv.clone(), nm=nm, lazy=1)
    result = greedy_eliminate(torch.from_numpy(w), hinv.clone(), nm=nm, lazy=lazy)
    assert torch.equal(result.order, eager.order)
    torch.testing.assert_close(result.cumloss, eager.cumloss, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.weights, eager.weights, rtol=1e-9, atol=1e-12)
    for b in range(2):
        order, cumloss, traces = oracles.obs_eliminate(w[b], oracles.damped_fisher(grads[:, b], DAMP), w[b] == 0, nm)
        assert result.order[b, : len(order)].tolist() == order
        assert rel_err(result.cumloss[b, : len(cumloss)].numpy(), cumloss) < 1e-6


def test_the_exhaustive_nm_oracle_bounds_the_greedy_elimination():
    # issue 17.5: the greedy order under per-group quotas against the best 2:4 mask found by exhaustive search
    w, grads, _ = random_problem(num_blocks=6, block=12, num_grads=30)
    gaps = []
    for b in range(6):
        fisher = oracles.damped_fisher(grads[:, b], 1e-4)
        result = greedy_eliminate(torch.from_numpy(w[b : b + 1]), torch.from_numpy(np.linalg.inv(fisher))[None].clone(), nm=(4, 2))
        removed = sorted(int(j) for j in result.order[0] if j >= 0)
        greedy_loss = float(result.cumloss[0, -1])
        # the greedy path's cumulative loss is the joint OBS loss of its removed set, with the same weights
        joint_loss, joint_weights = oracles.obs_removal(w[b], fisher, removed)
        assert greedy_loss == pytest.approx(joint_loss, rel=1e-8)
        assert rel_err(result.weights[0].numpy(), joint_weights) < 1e-8
        exact_loss, _, exact_removed = oracles.nm_exact(w[b], fisher, (4, 2), w[b] == 0)
        assert exact_loss <= greedy_loss * (1 + 1e-10)
        assert all(sum(j // 4 == g for j in exact_removed) >= 2 for g in range(3))  # already-zero weights count too
        gaps.append(greedy_loss / exact_loss if exact_loss > 0 else 1.0)
    assert min(gaps) >= 1 - 1e-10
    # with a diagonal Fisher the weights are independent: greedy is the exact optimum
    diagonal = np.diag(np.arange(1.0, 13.0))
    result = greedy_eliminate(torch.from_numpy(w[1:2]), torch.from_numpy(np.linalg.inv(diagonal))[None].clone(), nm=(4, 2))
    assert float(result.cumloss[0, -1]) == pytest.approx(oracles.nm_exact(w[1], diagonal, (4, 2), w[1] == 0)[0], rel=1e-12)


def test_replay_in_count_buckets_equals_the_joint_obs_solution_per_block():
    # blocks of B = 40 with counts from 0 to B: several buckets, padded systems, empty and full removals
    torch.manual_seed(0)
    n, b = 12, 40
    grads = torch.randn(n, 64, b, dtype=torch.float64)
    hinv = torch.linalg.inv(grads.transpose(1, 2) @ grads / 64 + 1e-2 * torch.eye(b, dtype=torch.float64))
    w = torch.randn(n, b, dtype=torch.float64)
    order = torch.stack([torch.randperm(b) for _ in range(n)])
    counts = torch.tensor([0, 1, 15, 16, 17, 20, 31, 32, 33, 39, 40, 7])
    new = replay(w, hinv, order, counts)
    for i in range(n):
        q = order[i, : counts[i]]
        expected = w[i] - hinv[i][:, q] @ torch.linalg.solve(hinv[i][q][:, q], w[i][q]) if counts[i] else w[i]
        expected = expected.clone()
        expected[q] = 0
        torch.testing.assert_close(new[i], expected, rtol=1e-9, atol=1e-9)
        assert int((new[i] == 0).sum()) == int(counts[i])


@pytest.mark.parametrize("nm", [None, (4, 2)])
def test_a_non_contiguous_inverse_is_eliminated_as_a_contiguous_one(nm):
    # the pivots' rows are gathered from a flat view of the workspace: a strided input is eliminated on a contiguous
    # copy, and the caller's tensor still ends as the fully downdated inverse
    w, hinv, _ = _problem(5, num_blocks=6, block=16)
    weights = torch.from_numpy(w)
    contiguous = hinv.clone()
    strided = hinv.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not strided.is_contiguous()
    expected = greedy_eliminate(weights, contiguous, nm=nm)
    result = greedy_eliminate(weights, strided, nm=nm)
    for field in ("order", "cumloss", "num_forced", "num_steps", "weights"):
        assert torch.equal(getattr(result, field), getattr(expected, field)), field
    assert torch.equal(strided, contiguous)
    # every removed weight is exactly zero (they are zeroed once, after the last step)
    removed = result.order >= 0
    assert (result.weights.gather(1, result.order.clamp_min(0))[removed] == 0).all()
