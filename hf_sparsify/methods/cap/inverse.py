"""Damped Fisher blocks and their inverses, by batched Cholesky with a damped fallback.

``F_b = damp·I + (1/m)·Σ_i g_{i,b} g_{i,b}ᵀ`` for every block ``b``; its inverse is what the OBS formulas use.
The reference builds ``F_b⁻¹`` by one Sherman–Morrison update per gradient; here the sums are accumulated with
batched matrix products (:func:`hf_sparsify.observers.fisher.collect_fisher`) and inverted once, in float64, block
chunk by block chunk. A block whose Cholesky factorisation fails (rounding on a nearly singular block) is retried
with more dampening, ``damp + 10^(k-7)·mean(diag F_b)`` for ``k = 1..6``; if that still fails, a
:class:`~hf_sparsify.methods.base.PruningError` names the layer.

```python
>>> from hf_sparsify.methods.cap.inverse import block_fisher_inverse
>>> grads = torch.randn(10, 32, 8, dtype=torch.float64)       # 10 blocks of B = 8 weights, 32 gradients
>>> hinv, info = block_fisher_inverse(grads.transpose(1, 2) @ grads, num_grads=32, damp=1e-8, name="fc1")
>>> hinv.shape, info.redamped_blocks
(torch.Size([10, 8, 8]), 0)
```
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...utils import workspace_bytes
from ..base import PruningError

__all__ = ["InverseInfo", "block_fisher_inverse", "chunks", "damped_cholesky"]

#: relative extra dampening tried, in order, when a block is not positive definite
RETRY_DAMPING = tuple(10.0 ** (k - 7) for k in range(1, 7))


@dataclass
class InverseInfo:
    """How many blocks needed extra dampening, and the largest relative extra dampening used."""

    redamped_blocks: int = 0
    max_extra_damping: float = 0.0

    def merge(self, other: "InverseInfo") -> None:
        self.redamped_blocks += other.redamped_blocks
        self.max_extra_damping = max(self.max_extra_damping, other.max_extra_damping)


def chunks(total: int, size: int):
    """``(start, stop)`` ranges of at most ``size`` covering ``range(total)``."""
    size = max(1, int(size))
    for start in range(0, total, size):
        yield start, min(start + size, total)


def damped_cholesky(fisher: torch.Tensor, *, name: str, what: str = "Fisher block") -> tuple[torch.Tensor, InverseInfo]:
    """Lower Cholesky factors of a batch of symmetric matrices ``(n, B, B)``; blocks that fail are retried with
    relative dampening :data:`RETRY_DAMPING`. Raises :class:`PruningError` naming ``name`` when all retries fail
    or the matrices are not finite."""
    info = InverseInfo()
    if not bool(torch.isfinite(fisher).all()):
        raise PruningError(
            f"Layer {name}: the {what} holds NaN or inf (non-finite gradients). Check the calibration data and the "
            "model's weights; use mixed_precision='no'."
        )
    factor, status = torch.linalg.cholesky_ex(fisher)
    failed = torch.nonzero(status).flatten()
    if failed.numel():
        diag_mean = fisher[failed].diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(fisher.dtype).tiny)
        eye = torch.eye(fisher.shape[-1], dtype=fisher.dtype, device=fisher.device)
        pending = failed
        for extra in RETRY_DAMPING:
            sub = fisher[pending] + (extra * diag_mean)[:, None, None] * eye
            sub_factor, sub_status = torch.linalg.cholesky_ex(sub)
            ok = sub_status == 0
            factor[pending[ok]] = sub_factor[ok]
            if ok.any():
                info.max_extra_damping = max(info.max_extra_damping, extra)
            pending, diag_mean = pending[~ok], diag_mean[~ok]
            if not pending.numel():
                break
        if pending.numel():
            raise PruningError(
                f"Layer {name}: {pending.numel()} {what}(s) are not positive definite even with extra dampening "
                f"{RETRY_DAMPING[-1]:g}·mean(diag). Increase damp, use more gradients (num_grads), or leave the layer "
                "out with ignore=[...]."
            )
        info.redamped_blocks = int(failed.numel())
    return factor, info


@torch.no_grad()
def block_fisher_inverse(
    sums: torch.Tensor,
    num_grads: int,
    damp: float,
    *,
    name: str = "layer",
    blocks_in_parallel: int | None = None,
) -> tuple[torch.Tensor, InverseInfo]:
    """Invert ``damp·I + sums/num_grads`` for every block, **in place** of ``sums`` (``(n, B, B)``).

    Each chunk of ``blocks_in_parallel`` blocks (default: as many float64 blocks as
    :func:`~hf_sparsify.utils.workspace_bytes` holds) is factorised and inverted in float64 and written back in the
    dtype of ``sums``. Returns ``sums`` (now the inverses) and an :class:`InverseInfo`.
    """
    if num_grads < 1:
        raise ValueError(f"num_grads must be ≥ 1, got {num_grads}")
    if not damp > 0:
        raise ValueError(f"damp must be > 0, got {damp}")
    n, b, _ = sums.shape
    size = blocks_in_parallel or max(1, workspace_bytes(sums.device) // (b * b * 8))
    eye = torch.eye(b, dtype=torch.float64, device=sums.device)
    info = InverseInfo()
    for start, stop in chunks(n, size):
        fisher = sums[start:stop].to(torch.float64) / num_grads + damp * eye
        factor, part = damped_cholesky(fisher, name=name)
        info.merge(part)
        # cholesky_solve against I: batched cholesky_inverse is ~40x slower on multi-threaded CPU (torch 2.13)
        sums[start:stop] = torch.cholesky_solve(eye.expand_as(factor), factor).to(sums.dtype)
    return sums, info
