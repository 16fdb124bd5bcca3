"""FastCAP's column-sequential update equals the column-by-column OBS oracle, and returns updated weights."""

import numpy as np
import pytest
import torch

from hf_sparsify.methods import PruningError
from hf_sparsify.methods.cap.fastcap import fastcap_prune
from tests import oracles
from tests.methods.cap.helpers import rel_err


def _problem(rows=6, b=8, m=30, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, b))
    w[1, 2] = 0
    w[4, :3] = 0
    mixing = rng.standard_normal((b, b))
    grads = rng.standard_normal((m, rows, b)) @ mixing * (w != 0)[None]
    grads[:, :, 5] = 0  # a dead column: no gradient anywhere
    return w, np.einsum("mrb,mrc->bc", grads, grads), m


@pytest.mark.parametrize("nm, columns", [(None, None), (None, 4), ((2, 4), None), ((2, 4), 4), ((1, 4), 8)])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_equals_the_oracle(nm, columns, sparsity):
    w, fisher_sum, m = _problem()
    if nm is not None:
        sparsity = 1 - nm[0] / nm[1]
    expected = oracles.fastcap_prune(w, fisher_sum, m, sparsity, 1e-2, nm=nm, columns_per_step=columns)
    got = fastcap_prune(torch.from_numpy(w), torch.from_numpy(fisher_sum), m, sparsity=sparsity, damp=1e-2, nm=nm, columns_per_step=columns)
    assert rel_err(got.numpy(), expected) < 1e-5
    assert ((got == 0) == torch.from_numpy(expected == 0)).all()
    assert (got[torch.from_numpy(w == 0)] == 0).all()  # already-zero weights stay pruned
    assert (got[:, 5] == 0).all()  # the dead column is pruned
    if nm is not None:
        assert ((got != 0).reshape(-1, nm[1]).sum(1) <= nm[0]).all()
    elif columns is None:
        assert int((got == 0).sum()) == round(sparsity * w.size)  # one mask for the whole layer: exact count


def test_the_updated_weights_are_returned_not_the_originals():
    # the released reference loses the update (it keeps the original tensor): here survivors move
    w, fisher_sum, m = _problem(seed=1)
    got = fastcap_prune(torch.from_numpy(w), torch.from_numpy(fisher_sum), m, sparsity=0.5, damp=1e-2)
    kept = got != 0
    assert not torch.allclose(got[kept], torch.from_numpy(w)[kept])


def test_float32_weights_come_back_as_float32():
    w, fisher_sum, m = _problem(seed=2)
    got = fastcap_prune(torch.from_numpy(w).float(), torch.from_numpy(fisher_sum).float(), m, sparsity=0.5)
    assert got.dtype == torch.float32


def test_non_finite_shared_fisher_names_the_layer():
    w, fisher_sum, m = _problem()
    fisher_sum[0, 0] = np.inf
    with pytest.raises(PruningError, match="blocks.3.pwconv1"):
        fastcap_prune(torch.from_numpy(w), torch.from_numpy(fisher_sum), m, sparsity=0.5, name="blocks.3.pwconv1")
