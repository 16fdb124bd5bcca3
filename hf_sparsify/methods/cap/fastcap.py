"""FastCAP: one shared ``B×B`` empirical Fisher per layer and a SparseGPT-style column-sequential OBS update.

The weight is viewed as ``(d/B, B)`` (rows of ``B`` consecutive weights); every row shares
``F = (2/m)·Σ_i G_iᵀG_i``. Dead columns (``F_jj = 0``) get ``F_jj = 1`` and zero weights; relative dampening adds
``damp·mean(diag F)·I``. With ``U`` the upper Cholesky factor of ``F⁻¹``, columns are processed left to right in
steps of ``columns_per_step``: the mask of a step keeps the largest ``w²/U_jj²`` (``round(s·size)`` removed, or
``M − N`` per group of ``M`` for N:M), then each column is rounded to its mask and its error is propagated to the
columns on its right, ``W[:, i:] −= ((w_i − q_i)/U_ii) ⊗ U[i, i:]``.

Unlike the released reference (which discards the updated weights and keeps the originals), the updated
weights are **returned**.

```python
>>> from hf_sparsify.methods.cap.fastcap import fastcap_prune
>>> grads = torch.randn(256, 16, 8, dtype=torch.float64)      # 256 gradients of a layer seen as 16 rows of B = 8
>>> fisher_sum = torch.einsum("mrb,mrc->bc", grads, grads)    # the shared B×B sum
>>> new_w = fastcap_prune(torch.randn(16, 8, dtype=torch.float64), fisher_sum, num_grads=256, sparsity=0.5, damp=1e-2, name="fc1")
>>> int((new_w == 0).sum())
64
```
"""

from __future__ import annotations

import torch

from ...surgery import lowest_k_masks
from .inverse import damped_cholesky
from .selection import nm_remove_mask, num_to_remove

__all__ = ["fastcap_prune", "shared_fisher_factor"]


@torch.no_grad()
def shared_fisher_factor(fisher_sum: torch.Tensor, num_grads: int, damp: float, *, name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of the damped ``F⁻¹`` (float64) and the dead columns."""
    fisher = 2.0 * fisher_sum.to(torch.float64) / num_grads
    diag = fisher.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag += damp * diag.mean()
    factor, _ = damped_cholesky(fisher[None], name=name, what="shared Fisher")
    hinv = torch.cholesky_inverse(factor[0])
    upper, _ = damped_cholesky(hinv[None], name=name, what="inverse shared Fisher")
    return upper[0].T.contiguous(), dead


@torch.no_grad()
def fastcap_prune(
    weights: torch.Tensor,
    fisher_sum: torch.Tensor,
    num_grads: int,
    *,
    sparsity: float,
    damp: float = 1e-2,
    nm: tuple[int, int] | None = None,
    columns_per_step: int | None = None,
    pruned: torch.Tensor | None = None,
    name: str = "layer",
    factor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Prune the rows of ``weights`` (``(rows, B)``) with the shared Fisher ``fisher_sum`` (``(B, B)``, summed
    over ``num_grads`` gradients). Returns the pruned and updated weights (dtype of ``weights``).

    Args:
        sparsity: fraction removed in every column step (uniform per layer); ignored for N:M.
        damp: relative dampening (``damp·mean(diag F)`` is added to the diagonal).
        nm: ``(N, M)``: keep at most ``N`` of every ``M`` consecutive weights of a row.
        columns_per_step: columns whose mask is chosen together (default: all ``B``).
        pruned: already-pruned weights (they stay pruned); default ``weights == 0``.
        factor: ``shared_fisher_factor(fisher_sum, num_grads, damp)`` when already computed (several sparsities of
            one layer share it); default: computed here.
    """
    rows, b = weights.shape
    device = fisher_sum.device
    w = weights.to(device=device, dtype=torch.float64, copy=True)
    forced = (w == 0) if pruned is None else pruned.to(device=device, dtype=torch.bool).clone()
    upper, dead = factor if factor is not None else shared_fisher_factor(fisher_sum, num_grads, damp, name=name)
    w[:, dead] = 0
    forced[:, dead] = True
    step = columns_per_step or b
    if nm is not None and step % nm[1]:
        raise ValueError(f"columns_per_step={step} must be a multiple of M={nm[1]} for an N:M mask")
    for c1 in range(0, b, step):
        c2 = min(c1 + step, b)
        block = w[:, c1:c2].clone()
        quantised = torch.zeros_like(block)
        errors = torch.zeros_like(block)
        u = upper[c1:c2, c1:c2]
        d = u.diagonal()
        block_forced = forced[:, c1:c2]
        if nm is None:
            scores = (block * block / (d * d)).masked_fill(block_forced, float("-inf"))
            k = num_to_remove(scores.numel(), sparsity, int(block_forced.sum()))
            remove = ~lowest_k_masks([scores], k)[0]
        else:
            n_keep, m = nm
            remove = torch.zeros_like(block_forced)
        for i in range(c2 - c1):
            if nm is not None and i % m == 0:
                group = block[:, i : i + m]
                scores = group * group / (d[i : i + m] ** 2)
                remove[:, i : i + m] = nm_remove_mask(scores, m, m - n_keep, block_forced[:, i : i + m])
            column = block[:, i]
            q = column.masked_fill(remove[:, i], 0)
            err = (column - q) / d[i]
            block[:, i:] -= err[:, None] * u[i, i:][None, :]
            quantised[:, i] = q
            errors[:, i] = err
        w[:, c1:c2] = quantised
        w[:, c2:] -= errors @ upper[c1:c2, c2:]
    return w.to(weights.dtype)
