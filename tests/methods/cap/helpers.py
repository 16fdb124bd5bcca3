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


def distributed_cases():
    """The prunings the 2-process test compares with 1 process: name -> (model, batches, config)."""
    from hf_sparsify import CAPConfig, FastCAPConfig, WoodFisherConfig
    from tests.conftest import make_tiny_model, tiny_batches

    # more gradients than weights per block and a moderate dampening: well-conditioned Fisher blocks, so the
    # rounding of the model's float32 gradients (which differs with the thread count) stays at rounding level in the
    # pruned weights
    vit = make_tiny_model("vit")
    batches = tiny_batches(vit, num_batches=24, batch=2)
    backbone = make_tiny_model("dinov2", backbone=True)
    unlabelled = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(backbone, num_batches=24, batch=2)]
    common = dict(fisher_block_size=16, num_grads=24, damp=1e-4)
    return {
        "cap": (vit, batches, CAPConfig(sparsity=0.7, **common)),
        "cap-2:4": (vit, batches, CAPConfig(sparsity=0.5, mask_structure="2:4", **common)),
        "woodfisher": (vit, batches, WoodFisherConfig(sparsity=0.5, **common)),
        # ⟨v, features⟩ sums over all tokens: larger gradients, a less well-conditioned Fisher; float64 blocks (the
        # default) keep the thread-count rounding of the sums out of the replayed weights (float32: ~3e-5 relative)
        "cap-features": (backbone, unlabelled, CAPConfig(sparsity=0.5, loss="features", **{**common, "damp": 1e-2})),
        "fastcap-features": (backbone, unlabelled, FastCAPConfig(sparsity=0.5, fisher_block_size=16, num_grads=24, loss="features")),
    }
