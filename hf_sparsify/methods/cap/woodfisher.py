"""WoodFisher (the baseline CAP improves on): OBS saliencies computed once, every selected weight removed at once
with the sum of the single-weight OBS updates (which ignores the interactions inside the removed set).

``ρ_j = w_j² / (2 [H⁻¹]_jj)`` and ``δw = −Σ_{q∈Q} (w_q / [H⁻¹]_qq) · H⁻¹[:, q]``.

```python
>>> scores = woodfisher_saliency(w_blocks, hinv)            # (n, B)
>>> new_w = woodfisher_update(w_blocks, hinv, remove=scores < threshold)
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
