"""Batched Cholesky inverses of the damped Fisher blocks equal the reference's per-gradient Sherman–Morrison."""

import numpy as np
import pytest
import torch

from hf_sparsify.methods import PruningError
from hf_sparsify.methods.cap.inverse import block_fisher_inverse, damped_cholesky
from tests import oracles
from tests.methods.cap.helpers import random_problem, rel_err


@pytest.mark.parametrize("damp", [1e-2, 1e-5])
@pytest.mark.parametrize("blocks_in_parallel", [None, 2])
def test_equals_sherman_morrison_per_gradient(damp, blocks_in_parallel):
    w, grads, sums = random_problem(num_blocks=5, block=8, num_grads=24)
    hinv, info = block_fisher_inverse(sums.clone(), grads.shape[0], damp, blocks_in_parallel=blocks_in_parallel)
    assert info.redamped_blocks == 0
    for b in range(5):
        reference = oracles.sherman_morrison_fisher_inverse(grads[:, b], damp)
        assert rel_err(hinv[b].numpy(), reference) < 1e-5
    # already-pruned coordinates are decoupled: 1/damp on the diagonal, zero elsewhere
    assert hinv[0, 1, 1].item() == pytest.approx(1 / damp, rel=1e-12)
    assert torch.count_nonzero(hinv[0, 1]).item() == 1
    assert torch.allclose(hinv[2], torch.eye(8, dtype=torch.float64) / damp)


def test_float32_storage_keeps_the_float64_inverse_to_rounding():
    _, grads, sums = random_problem(num_blocks=4, block=8, num_grads=32, zeros=False)
    hinv, _ = block_fisher_inverse(sums.float(), grads.shape[0], 1e-3)
    assert hinv.dtype == torch.float32
    for b in range(4):
        assert rel_err(hinv[b].numpy(), oracles.sherman_morrison_fisher_inverse(grads[:, b], 1e-3)) < 1e-5


def test_fewer_gradients_than_the_block_size_are_fine():
    # rank-deficient Σggᵀ: the dampening alone makes the block invertible
    _, grads, sums = random_problem(num_blocks=3, block=16, num_grads=4, zeros=False)
    hinv, info = block_fisher_inverse(sums.clone(), 4, 1e-4)
    assert info.redamped_blocks == 0
    for b in range(3):
        assert rel_err(hinv[b].numpy(), oracles.sherman_morrison_fisher_inverse(grads[:, b], 1e-4)) < 1e-5


def test_relative_damp_adds_a_multiple_of_the_layers_mean_diagonal():
    # issue 17.5 (N:M): λ = damp + relative_damp · mean over all blocks of diag(Σggᵀ / m)
    _, grads, sums = random_problem(num_blocks=4, block=8, num_grads=6, zeros=False)
    mean_diag = float(np.mean([np.diag(oracles.damped_fisher(grads[:, b], 0.0)).mean() for b in range(4)]))
    hinv, _ = block_fisher_inverse(sums.clone(), 6, 1e-8, relative_damp=1e-2, blocks_in_parallel=3)
    for b in range(4):
        reference = np.linalg.inv(oracles.damped_fisher(grads[:, b], 1e-8 + 1e-2 * mean_diag))
        assert rel_err(hinv[b].numpy(), reference) < 1e-8
    with pytest.raises(ValueError, match="relative_damp"):
        block_fisher_inverse(sums.clone(), 6, 1e-8, relative_damp=-1.0)


def test_not_positive_definite_is_retried_with_more_dampening():
    # a block with a slightly negative eigenvalue (as rounding can produce) is rescued by extra dampening
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    bad = q @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1e-6], dtype=torch.float64)) @ q.T
    good = torch.eye(6, dtype=torch.float64)
    factor, info = damped_cholesky(torch.stack([good, bad]), name="vit.layers.0.mlp.fc1")
    assert info.redamped_blocks == 1 and 0 < info.max_extra_damping <= 1e-4
    assert torch.allclose(factor[0], good)


def test_hopeless_block_raises_an_error_naming_the_layer():
    sums = -torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone()  # negative definite
    with pytest.raises(PruningError, match=r"vit\.layers\.2\.attention\.q_proj.*not positive definite.*damp"):
        block_fisher_inverse(sums, 10, 1e-8, name="vit.layers.2.attention.q_proj")


def test_non_finite_fisher_names_the_layer():
    sums = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone()
    sums[1, 0, 0] = float("nan")
    with pytest.raises(PruningError, match=r"fc2.*NaN or inf"):
        block_fisher_inverse(sums, 10, 1e-8, name="fc2")


@pytest.mark.parametrize("damp, num_grads", [(0.0, 1), (-1e-8, 1), (1e-8, 0)])
def test_invalid_damp_or_count(damp, num_grads):
    with pytest.raises(ValueError):
        block_fisher_inverse(torch.eye(2).expand(1, 2, 2).clone(), num_grads, damp)


@pytest.mark.parametrize("block", [49, 96, 192])
def test_schur_complement_inverse_equals_the_oracle_above_the_lapack_size(block):
    # blocks larger than SCHUR_BASE are inverted by Schur complements with batched products
    from hf_sparsify.methods.cap.inverse import SCHUR_BASE

    assert block > SCHUR_BASE
    w, grads, sums = random_problem(num_blocks=3, block=block, num_grads=block + 16)
    hinv, info = block_fisher_inverse(sums.clone(), grads.shape[0], 1e-4)
    assert info.redamped_blocks == 0
    for b in range(3):
        expected = np.linalg.inv(oracles.damped_fisher(grads[:, b], 1e-4))
        assert rel_err(hinv[b].numpy(), expected) < 1e-8
    # already-pruned coordinates stay decoupled through the Schur complements
    assert torch.count_nonzero(hinv[0, 1]).item() == 1
    assert torch.allclose(hinv[2], torch.eye(block, dtype=torch.float64) / 1e-4)


def test_schur_complement_inverse_detects_a_block_that_is_not_positive_definite():
    # the negative eigenvalue sits in the Schur complement, not in the leading sub-block
    from hf_sparsify.methods.cap.inverse import spd_inverse

    q, _ = torch.linalg.qr(torch.randn(100, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    eigenvalues = torch.ones(100, dtype=torch.float64)
    eigenvalues[-1] = -1e-6
    bad = q @ torch.diag(eigenvalues) @ q.T
    good = torch.eye(100, dtype=torch.float64)
    inverse, info = spd_inverse(torch.stack([good, bad]), name="fc1")
    assert info.redamped_blocks == 1 and 0 < info.max_extra_damping <= 1e-4
    assert torch.allclose(inverse[0], good)
    assert bool(torch.linalg.eigvalsh(inverse[1]).min() > 0)
