"""Random Fisher problems for the CAP-family tests (numpy float64, as the oracles use)."""

from __future__ import annotations

import numpy as np
import torch


def random_problem(num_blocks: int = 6, block: int = 8, num_grads: int = 24, seed: int = 0, zeros: bool = True):
    """Weights ``(n, B)`` (some already zero, one block all zero), masked gradients ``(m, n, B)``, and the
    gradient outer-product sums ``(n, B, B)`` as a float64 torch tensor."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((num_blocks, block))
    if zeros:
        w[0, [1, 3]] = 0
        w[min(2, num_blocks - 1)] = 0
        w[-1, rng.choice(block, block // 3, replace=False)] = 0
    # correlated gradients: a random mixing makes the Fisher blocks far from diagonal
    mixing = rng.standard_normal((block, block))
    grads = rng.standard_normal((num_grads, num_blocks, block)) @ mixing * (w != 0)[None]
    sums = torch.from_numpy(np.einsum("mnb,mnc->nbc", grads, grads))
    return w, grads, sums


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))
