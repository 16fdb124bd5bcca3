"""WoodFisher (the baseline CAP improves on): OBS saliencies computed once, every selected weight removed at once
with the sum of the single-weight OBS updates (which ignores the interactions inside the removed set).

``ρ_j = w_j² / (2 [H⁻¹]_jj)`` and ``δw = −Σ_{q∈Q} (w_q / [H⁻¹]_qq) · H⁻¹[:, q]``.

```python
>>> from hf_sparsify.methods.cap.inverse import block_fisher_inverse
>>> from hf_sparsify.methods.cap.woodfisher import woodfisher_saliency, woodfisher_update
>>> from hf_sparsify.surgery import lowest_k_masks
>>> grads = torch.randn(10, 32, 8, dtype=torch.float64)       # 10 blocks of B = 8 weights, 32 gradients
>>> hinv, _ = block_fisher_inverse(grads.transpose(1, 2) @ grads, num_grads=32, damp=1e-8)
>>> w_blocks = torch.randn(10, 8, dtype=torch.float64)
>>> scores = woodfisher_saliency(w_blocks, hinv)            # (n, B), float64 like hinv
>>> keep = lowest_k_masks([scores], 40)[0]
>>> new_w = woodfisher_update(w_blocks, hinv, remove=~keep)
>>> int((new_w == 0).sum())
40
```
"""

from __future__ import annotations

import torch

__all__ = ["woodfisher_saliency", "woodfisher_update"]


@torch.no_grad()
def woodfisher_saliency(weights: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
    """``w² / (2·diag(H⁻¹))`` per weight, ``(n, B)``, in the dtype of ``hinv`` (float64 stays float64, so that the
    global ranking separates saliencies closer than float32 can) on its device."""
    w = weights.to(device=hinv.device, dtype=hinv.dtype)
    return w * w / (2 * hinv.diagonal(dim1=1, dim2=2))


@torch.no_grad()
def woodfisher_update(weights: torch.Tensor, hinv: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """Remove the weights where ``remove`` is True, all at once, with the summed OBS update (``(n, B)``)."""
    w = weights.to(device=hinv.device, dtype=torch.float64)
    h = hinv.to(torch.float64)
    remove = remove.to(hinv.device)
    coef = torch.where(remove, w / h.diagonal(dim1=1, dim2=2), 0.0)
    new = w - torch.bmm(h, coef.unsqueeze(-1)).squeeze(-1)
    new.masked_fill_(remove, 0)
    return new.to(weights.dtype)
