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
from typing import Callable

import torch

from ...utils import workspace_bytes
from ..base import PruningError

__all__ = ["InverseInfo", "block_fisher_inverse", "chunks", "damped_cholesky", "spd_inverse"]

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
    return _solve_with_retries(fisher, _cholesky, name=name, what=what)


#: blocks at most this size are inverted by LAPACK (Cholesky); larger ones by Schur complements with batched products
SCHUR_BASE = 48


def _spd_inverse(fisher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverses of a batch of symmetric positive definite matrices ``(n, B, B)`` and a bool ``(n,)`` that is False
    where a matrix is not positive definite (its inverse is then garbage).

    Block LDLᵀ by Schur complements: with ``F = [[A, Cᵀ], [C, D]]``, ``S = D − C A⁻¹ Cᵀ`` and ``Y = C A⁻¹``,
    ``F⁻¹ = [[A⁻¹ + Yᵀ S⁻¹ Y, −(S⁻¹ Y)ᵀ], [−S⁻¹ Y, S⁻¹]]``; ``F`` is positive definite iff ``A`` and ``S`` are.
    Four batched products per level (``4/3·B³`` flops in all, at the machine's matmul rate), down to LAPACK
    Cholesky inverses of at most :data:`SCHUR_BASE` rows; batched LAPACK on small matrices is several times slower
    than a batched product on CPU.
    """
    b = fisher.shape[-1]
    if b <= SCHUR_BASE:
        factor, status = torch.linalg.cholesky_ex(fisher)
        eye = torch.eye(b, dtype=fisher.dtype, device=fisher.device)
        # cholesky_solve against I: batched cholesky_inverse is ~40x slower on multi-threaded CPU (torch 2.13)
        return torch.cholesky_solve(eye.expand_as(factor), factor), status == 0
    h = b // 2
    a_inv, ok_a = _spd_inverse(fisher[:, :h, :h])
    c = fisher[:, h:, :h]
    y = torch.bmm(c, a_inv)  # C A⁻¹
    schur = torch.baddbmm(fisher[:, h:, h:], y, c.transpose(1, 2), alpha=-1)
    s_inv, ok_s = _spd_inverse(schur)
    del schur
    z = torch.bmm(s_inv, y)  # S⁻¹ C A⁻¹
    out = torch.empty_like(fisher)
    torch.baddbmm(a_inv, y.transpose(1, 2), z, out=out[:, :h, :h])
    out[:, h:, :h] = z.neg_()
    out[:, :h, h:] = z.transpose(1, 2)
    out[:, h:, h:] = s_inv
    return out, ok_a & ok_s


def _cholesky(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factors of a batch and whether each succeeded."""
    factor, status = torch.linalg.cholesky_ex(matrices)
    return factor, status == 0


def _solve_with_retries(
    fisher: torch.Tensor, solve: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], *, name: str, what: str
) -> tuple[torch.Tensor, InverseInfo]:
    """``solve`` (a batch → results and a per-matrix success flag) on a batch of Fisher blocks; the matrices it fails
    on are solved again with relative dampening :data:`RETRY_DAMPING` (``+ extra · mean|diag|``). Raises
    :class:`PruningError` naming ``name`` when the blocks are not finite or every retry fails."""
    info = InverseInfo()
    if not _diagonal_is_finite(fisher):
        raise PruningError(
            f"Layer {name}: the {what} holds NaN or inf (non-finite gradients). Check the calibration data and the "
            "model's weights; use mixed_precision='no'."
        )
    result, ok = solve(fisher)
    failed = torch.nonzero(~ok).flatten()
    if failed.numel():
        diag_mean = fisher[failed].diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(fisher.dtype).tiny)
        eye = torch.eye(fisher.shape[-1], dtype=fisher.dtype, device=fisher.device)
        pending = failed
        for extra in RETRY_DAMPING:
            sub_result, sub_ok = solve(fisher[pending] + (extra * diag_mean)[:, None, None] * eye)
            result[pending[sub_ok]] = sub_result[sub_ok]
            if sub_ok.any():
                info.max_extra_damping = max(info.max_extra_damping, extra)
            pending, diag_mean = pending[~sub_ok], diag_mean[~sub_ok]
            if not pending.numel():
                break
        if pending.numel():
            raise PruningError(
                f"Layer {name}: {pending.numel()} {what}(s) are not positive definite even with extra dampening "
                f"{RETRY_DAMPING[-1]:g}·mean(diag). Increase damp, use more gradients (num_grads), or leave the layer "
                "out with ignore=[...]."
            )
        info.redamped_blocks = int(failed.numel())
    return result, info


def _diagonal_is_finite(matrices: torch.Tensor) -> bool:
    """Whether a batch of Gram matrices (sums of outer products) is finite: a non-finite entry of ``Σ g gᵀ``
    comes from a non-finite ``g_j``, or an overflow, and shows on the diagonal (``|F_ij| ≤ √(F_ii F_jj)``).
    ``torch.isfinite`` of the whole batch is ~100x slower than this on CPU."""
    return bool(torch.isfinite(matrices.diagonal(dim1=-2, dim2=-1).sum(-1)).all())


@torch.no_grad()
def spd_inverse(fisher: torch.Tensor, *, name: str, what: str = "Fisher block") -> tuple[torch.Tensor, InverseInfo]:
    """Inverses of a batch of symmetric positive definite float64 matrices ``(n, B, B)`` (:func:`_spd_inverse`);
    matrices that are not positive definite are retried with relative dampening :data:`RETRY_DAMPING`, as in
    :func:`damped_cholesky`. Raises :class:`PruningError` naming ``name`` when all retries fail or the matrices are
    not finite."""
    return _solve_with_retries(fisher, _spd_inverse, name=name, what=what)


#: on a CPU the blocks are inverted in chunks of about this many bytes of float64 blocks, so that the Schur
#: recursion's sub-blocks and temporaries stay in the last-level cache: at B = 192, chunks of 28 blocks invert about
#: twice as fast per block as chunks of the 256 MiB workspace (910 blocks) on this project's CPU (32 MiB L3;
#: benchmarks/RESULTS.md); the results are the same (every block is inverted on its own)
CPU_INVERSE_CHUNK_BYTES = 8 << 20


def _inverse_chunk(block_size: int, device: torch.device) -> int:
    """Blocks inverted together: within :data:`CPU_INVERSE_CHUNK_BYTES` on a CPU, within
    :func:`~hf_sparsify.utils.workspace_bytes` on a GPU (where large batches keep the device busy)."""
    limit = CPU_INVERSE_CHUNK_BYTES if torch.device(device).type == "cpu" else workspace_bytes(device)
    return max(1, limit // (block_size * block_size * 8))


@torch.no_grad()
def block_fisher_inverse(
    sums: torch.Tensor,
    num_grads: int,
    damp: float,
    *,
    name: str = "layer",
    blocks_in_parallel: int | None = None,
    relative_damp: float = 0.0,
) -> tuple[torch.Tensor, InverseInfo]:
    """Invert ``λ·I + sums/num_grads`` for every block, **in place** of ``sums`` (``(n, B, B)``), with
    ``λ = damp + relative_damp · mean(diag(sums/num_grads))`` (the mean over all blocks of the layer, as FastCAP's
    and SparseGPT's relative dampening; ``relative_damp=0``: ``λ = damp``).

    Each chunk of ``blocks_in_parallel`` blocks (default: :func:`_inverse_chunk`) is inverted in float64
    (:func:`spd_inverse`) and written back in the dtype of ``sums``. Returns ``sums`` (now the inverses) and an
    :class:`InverseInfo`.
    """
    if num_grads < 1:
        raise ValueError(f"num_grads must be ≥ 1, got {num_grads}")
    if not damp > 0:
        raise ValueError(f"damp must be > 0, got {damp}")
    if not relative_damp >= 0:
        raise ValueError(f"relative_damp must be ≥ 0, got {relative_damp}")
    n, b, _ = sums.shape
    size = blocks_in_parallel or _inverse_chunk(b, sums.device)
    if relative_damp:
        mean_diag = float(sums.diagonal(dim1=1, dim2=2).sum(dtype=torch.float64)) / (n * b * num_grads)
        damp = damp + relative_damp * mean_diag
    info = InverseInfo()
    for start, stop in chunks(n, size):
        fisher = sums[start:stop]
        if fisher.dtype == torch.float64:  # in place: the sums are consumed
            fisher.div_(num_grads)
        else:
            fisher = fisher.to(torch.float64) / num_grads
        fisher.diagonal(dim1=1, dim2=2).add_(damp)
        inverse, part = spd_inverse(fisher, name=name)
        info.merge(part)
        sums[start:stop] = inverse
    return sums, info
