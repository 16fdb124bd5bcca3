"""The reference CAP algorithm's cost model in torch, for speed comparisons (written from the description in
../shared/reference/methods.md §1.2, not copied): one Sherman–Morrison update of every block inverse per gradient,
and an elimination that keeps ``B + 1`` full weight traces per block on the CPU.

It computes the same result as hf_sparsify's CAP (up to rounding), so the benchmarks also compare masks.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sherman_morrison_inverse(grads: torch.Tensor, block: int, damp: float) -> torch.Tensor:
    """``(n, B, B)`` inverses of ``damp·I + (1/m) Σ g gᵀ`` from ``grads`` ``(m, numel)``, one update per gradient,
    batched over the blocks (as ``EmpiricalBlockFisherInverse.add_grad`` does)."""
    m = grads.shape[0]
    n = grads.shape[1] // block
    finv = (torch.eye(block, device=grads.device, dtype=grads.dtype) / damp).repeat(n, 1, 1)
    for g in grads:
        g = g.reshape(n, block)
        u = torch.bmm(finv, g.unsqueeze(-1)).squeeze(-1)
        denom = m + (g * u).sum(1)
        finv -= u.unsqueeze(2) * u.unsqueeze(1) / denom[:, None, None]
    return finv


@torch.no_grad()
def eliminate_with_traces(weights: torch.Tensor, finv: torch.Tensor, trace_device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS elimination of all blocks at once; returns ``(traces (B+1, n, B) on trace_device, cumulative
    losses (n, B) scattered to the weights' positions)``."""
    n, b = weights.shape
    w = weights.clone()
    hinv = finv.clone()
    rows = torch.arange(n, device=w.device)
    pruned = w == 0
    traces = torch.empty(b + 1, n, b, dtype=w.dtype, device=trace_device)
    traces[0] = w.to(trace_device)
    losses = torch.zeros(n, b, dtype=w.dtype, device=w.device)
    total = torch.zeros(n, dtype=w.dtype, device=w.device)
    done = torch.zeros_like(pruned)
    for k in range(b):
        diag = hinv.diagonal(dim1=1, dim2=2)
        rho = w * w / diag
        rho = rho.masked_fill(done, float("inf")).masked_fill(pruned & ~done, float("-inf"))
        p = rho.argmin(1)
        step = torch.where(pruned[rows, p], torch.zeros_like(total), w[rows, p] ** 2 / diag[rows, p])
        total += step
        losses[rows, p] = total
        col = hinv[rows, :, p]
        w -= (w[rows, p] / diag[rows, p])[:, None] * col
        done[rows, p] = True
        w[done] = 0
        traces[k + 1] = w.to(trace_device)
        if k < b - 1:
            hinv -= col.unsqueeze(2) * hinv[rows, p, :].unsqueeze(1) / diag[rows, p][:, None, None]
    return traces, losses / 2


@torch.no_grad()
def select_from_traces(traces_and_losses: list[tuple[torch.Tensor, torch.Tensor]], num_remove: int) -> list[torch.Tensor]:
    """Global selection on the cumulative losses (already-zero weights first), then each block loads the trace
    of its count."""
    scores = []
    for traces, losses in traces_and_losses:
        forced = traces[0] == 0
        scores.append(losses.masked_fill(forced.to(losses.device), float("-inf")).reshape(-1))
    flat = torch.cat(scores)
    order = torch.sort(flat, stable=True).indices[:num_remove]  # in the losses' own precision
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    out, start = [], 0
    for traces, losses in traces_and_losses:
        n, b = losses.shape
        counts = chosen[start : start + n * b].reshape(n, b).sum(1).to(traces.device)
        start += n * b
        out.append(traces[counts, torch.arange(n, device=traces.device)])
    return out
