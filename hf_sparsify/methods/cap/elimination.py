"""Exact greedy OBS elimination inside Fisher blocks (CAP), vectorised over blocks, and its replay.

For one block with weights ``w`` (``B``), inverse Fisher ``H⁻¹`` and already-pruned set ``P``:

```
eliminate the weights of P first (they are zero: no loss, no update)
repeat:
    ρ_j = w_j² / [H⁻¹]_jj  over the remaining j (inside N:M groups that may still lose a weight)
    p   = argmin ρ                     (the first index on ties)
    L  += ρ_p / 2                      cumulative loss of the block when p is removed
    w  -= (w_p / [H⁻¹]_pp) · H⁻¹[:, p] ; w_p = 0        (OBS update of the remaining weights)
    H⁻¹ -= H⁻¹[:, p] H⁻¹[p, :] / [H⁻¹]_pp              (Gaussian-elimination downdate)
```

:func:`greedy_eliminate` runs this for a whole chunk of blocks at once (one argmin and one rank-1 update of a
``(n, B, B)`` tensor per step) and keeps only the **elimination order and the cumulative losses**, ``O(B)`` per
block, instead of the reference's ``B + 1`` weight traces. Once the selection has fixed how many weights each
block loses, :func:`replay` rebuilds the weights: removing the first ``k`` weights ``Q`` of the order one at a time
with exact downdates gives the same weights as the joint OBS solution
``w − H⁻¹[:, Q] (H⁻¹[Q, Q])⁻¹ w_Q``, which is one batched Cholesky solve.

```python
>>> from hf_sparsify.methods.cap.elimination import greedy_eliminate, replay
>>> from hf_sparsify.methods.cap.inverse import block_fisher_inverse
>>> grads = torch.randn(10, 32, 8, dtype=torch.float64)       # 10 blocks of B = 8 weights, 32 gradients
>>> hinv, _ = block_fisher_inverse(grads.transpose(1, 2) @ grads, num_grads=32, damp=1e-8)
>>> w_blocks = torch.randn(10, 8, dtype=torch.float64)
>>> result = greedy_eliminate(w_blocks, hinv.clone(), pruned=w_blocks == 0)
>>> new_w = replay(w_blocks, hinv, result.order, counts=torch.full((10,), 3))   # 3 removals per block
>>> int((new_w == 0).sum())
30
```
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inverse import damped_cholesky

__all__ = ["Elimination", "greedy_eliminate", "replay"]


@dataclass
class Elimination:
    """What the selection and the replay need from an elimination.

    Attributes:
        order: ``(n, S)`` index of the weight removed at each step; ``-1`` where a block had no step left
            (N:M blocks that reached their quota early).
        cumloss: ``(n, S)`` cumulative loss ``½ Σ ρ_p`` of the block after each step (zero over the
            already-pruned weights, which come first).
        num_forced: ``(n,)`` how many already-pruned weights each block eliminated first.
        num_steps: ``(n,)`` how many steps each block took.
        weights: ``(n, B)`` the weights after the last step (the result of an N:M elimination).
        breakdowns: steps whose pivot ``[H⁻¹]_pp`` was not positive (rounding); 0 in a healthy run.
    """

    order: torch.Tensor
    cumloss: torch.Tensor
    num_forced: torch.Tensor
    num_steps: torch.Tensor
    weights: torch.Tensor
    breakdowns: int = 0


#: rank-1 downdates gathered before they are applied to the inverse blocks with one batched product
LAZY_DOWNDATES = 16


@torch.no_grad()
def greedy_eliminate(
    weights: torch.Tensor,
    hinv: torch.Tensor,
    pruned: torch.Tensor | None = None,
    *,
    nm: tuple[int, int] | None = None,
    lazy: int = LAZY_DOWNDATES,
) -> Elimination:
    """Greedy OBS elimination of every block of a chunk.

    The downdates ``H⁻¹ -= u uᵀ`` are applied lazily: the scores only need the diagonal (updated at every step,
    ``O(B)``) and the pivot's row (the last applied row minus the pending ``u``'s, ``O(lazy·B)``); every ``lazy``
    steps the pending downdates are applied with one batched matrix product, so the ``O(B³)`` work runs at the
    machine's matmul rate instead of ``B`` memory-bound rank-1 updates.

    Args:
        weights: ``(n, B)`` block weights (not modified).
        hinv: ``(n, B, B)`` inverse Fisher blocks, **overwritten** (used as workspace); pass a copy to keep them.
            Their dtype is the compute dtype.
        pruned: ``(n, B)`` bool, already-pruned weights (eliminated first at zero cost); default ``weights == 0``.
        nm: ``(M, quota)``: stop each group of ``M`` consecutive weights once ``quota`` of its weights are
            removed (``quota = M − N`` for an ``N:M`` mask). ``None``: eliminate every weight (``S = B``).
        lazy: downdates gathered before they are applied (``1``: one rank-1 update per step).

    Returns:
        An :class:`Elimination`.
    """
    n, b = weights.shape
    dtype, device = hinv.dtype, hinv.device
    lazy = max(1, min(int(lazy), b))
    w = weights.to(device=device, dtype=dtype, copy=True)
    forced = (w == 0) if pruned is None else pruned.to(device=device, dtype=torch.bool)
    done = torch.zeros(n, b, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    order = torch.full((n, b), -1, dtype=torch.long, device=device)
    cumloss = torch.zeros(n, b, dtype=dtype, device=device)
    cum = torch.zeros(n, dtype=dtype, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    breakdowns = torch.zeros((), dtype=torch.long, device=device)
    if nm is not None:
        m, quota = nm
        if b % m:
            raise ValueError(f"the block size {b} is not a multiple of M={m}")
        group_of = torch.arange(b, device=device) // m
        removed_in_group = torch.zeros(n, b // m, dtype=torch.long, device=device)
    given = hinv
    hinv = hinv if hinv.is_contiguous() else hinv.contiguous()
    diag = hinv.diagonal(dim1=1, dim2=2).clone()  # the current diagonal, downdated at every step
    flat = hinv.view(n * b, b)  # row p of block i is row i·B + p: the pivots' rows are gathered whole (index_select)
    base = rows * b
    pending_u = torch.empty(n, lazy, b, dtype=dtype, device=device)  # downdates not yet applied to hinv
    num_pending = 0
    # the per-step (n, B) arrays live in buffers allocated once: a fresh float64 array of a chunk is page-faulted
    # in at every step on CPU, which cost as much as the arithmetic (issue 17.3)
    row = torch.empty(n, b, dtype=dtype, device=device)
    rho = torch.empty(n, b, dtype=dtype, device=device)
    candidates = torch.empty(n, b, dtype=torch.bool, device=device)
    pending = torch.empty(n, b, dtype=torch.bool, device=device)
    minus_inf = -inf
    any_forced = bool(forced.any())  # a dense chunk (the usual case) has no forced steps to schedule
    no_block = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(b):
        torch.bitwise_not(done, out=candidates)
        if any_forced:
            torch.bitwise_and(forced, candidates, out=pending)
            has_forced = pending.any(1)
        else:
            has_forced = no_block
        if nm is not None:
            open_groups = removed_in_group < quota  # (removed_in_group counts the group's removed weights)
            candidates.view(n, b // m, m).logical_and_(open_groups.unsqueeze(2))  # groups of M in a row
            has_candidates = open_groups.any(1)  # a group below its quota still holds a weight not removed
        else:
            has_candidates = steps < b  # an active block removes one weight per step
        active = has_forced | has_candidates
        if not bool(active.any()):
            order, cumloss = order[:, :step], cumloss[:, :step]
            break
        torch.mul(w, w, out=rho)
        rho.div_(diag)
        torch.where(candidates, rho, inf, out=rho)
        if any_forced:
            torch.where(pending, minus_inf, rho, out=rho)
        p = rho.argmin(1)
        d = diag[rows, p]
        wp = w[rows, p]
        healthy = d > 0
        breakdowns += (active & ~healthy & ~has_forced).sum()
        live = active & healthy
        loss = torch.where(live & ~has_forced, wp * wp / d, zero)
        cum += loss / 2
        # the pivot's row (= column) of the current H⁻¹: the applied row minus the pending downdates
        torch.index_select(flat, 0, base + p, out=row)
        if num_pending:
            coef = pending_u[rows, :num_pending, p]  # (n, k): u_s[p]
            row.unsqueeze(1).baddbmm_(coef.unsqueeze(1), pending_u[:, :num_pending], alpha=-1)
        # OBS update of the weights, then the symmetric downdate u uᵀ, u = H⁻¹[p] / √d (pending)
        r = torch.where(live, d.clamp_min(tiny).rsqrt(), zero)
        u = row.mul_(r[:, None])
        w.addcmul_(u, (wp * r)[:, None], value=-1)
        diag.addcmul_(u, u, value=-1)
        pending_u[:, num_pending] = u
        num_pending += 1
        if num_pending == lazy:
            hinv.baddbmm_(pending_u.transpose(1, 2), pending_u, alpha=-1)
            num_pending = 0
        act = rows[active]
        done[act, p[active]] = True
        if nm is not None:
            removed_in_group[act, group_of[p[active]]] += 1
        order[:, step] = torch.where(active, p, torch.full_like(p, -1))
        cumloss[:, step] = cum
        steps += active.long()
    if num_pending:
        hinv.baddbmm_(pending_u[:, :num_pending].transpose(1, 2), pending_u[:, :num_pending], alpha=-1)
    # the removed weights drift from zero by rounding (their rows of H⁻¹ are zero only in exact arithmetic): nothing
    # reads them during the elimination (ρ is masked; an active block never pivots on one, an inactive block's update is
    # zero), so they are zeroed once, here
    torch.where(done, zero, w, out=w)
    if hinv is not given:
        given.copy_(hinv)
    return Elimination(
        order=order,
        cumloss=cumloss,
        num_forced=forced.sum(1),
        num_steps=steps,
        weights=w,
        breakdowns=int(breakdowns),
    )


#: blocks are replayed in buckets of similar removal counts; each bucket's systems are padded to a multiple of this
REPLAY_BUCKET = 16


@torch.no_grad()
def replay(weights: torch.Tensor, hinv: torch.Tensor, order: torch.Tensor, counts: torch.Tensor, *, name: str = "layer") -> torch.Tensor:
    """The weights after each block has removed the first ``counts[b]`` weights of its elimination ``order``.

    Computes ``w − H⁻¹[:, Q] (H⁻¹[Q, Q])⁻¹ w_Q`` per block in float64 (equal to the sequential OBS updates),
    with ``Q`` the removed set; returns ``(n, B)`` in the dtype of ``weights`` with exact zeros on ``Q``.

    The systems are solved at their own size, ``k = |Q|``, not ``B``: blocks are sorted by count and replayed in
    buckets padded to the next multiple of :data:`REPLAY_BUCKET` (the padding rows are the identity), so a block that
    removes half its weights costs an eighth of a full ``B×B`` Cholesky factorisation.

    Args:
        weights: ``(n, B)`` block weights before the elimination.
        hinv: ``(n, B, B)`` the inverse Fisher blocks before the elimination (not modified).
        order: ``(n, B)`` full elimination orders (a permutation per block).
        counts: ``(n,)`` how many weights each block removes.
    """
    n, b = weights.shape
    device = hinv.device
    counts = counts.to(device=device, dtype=torch.long)
    order = order.to(device=device, dtype=torch.long)
    w = weights.to(device=device, dtype=torch.float64)
    new = w.clone()
    sizes = ((counts + REPLAY_BUCKET - 1) // REPLAY_BUCKET * REPLAY_BUCKET).clamp_max(b)
    for k in sizes.unique().tolist():
        if k == 0:
            continue
        blocks = torch.nonzero(sizes == k).flatten()
        new[blocks] = _replay_bucket(w[blocks], hinv[blocks], order[blocks, :k], counts[blocks], name=name)
    return new.to(weights.dtype)


def _replay_bucket(w: torch.Tensor, hinv: torch.Tensor, first: torch.Tensor, counts: torch.Tensor, *, name: str) -> torch.Tensor:
    """:func:`replay` of ``m`` blocks whose removed sets are within their ``k`` first ``order`` entries ``first``
    (``(m, k)``): one ``(m, k, k)`` system per block, padded with identity rows beyond each block's count."""
    m, b = w.shape
    k = first.shape[1]
    valid = torch.arange(k, device=w.device)[None, :] < counts[:, None]  # (m, k): removed
    h = hinv.to(torch.float64)
    rows = h.gather(1, first[:, :, None].expand(m, k, b))  # H⁻¹[Q, :]  (m, k, B)
    system = rows.gather(2, first[:, None, :].expand(m, k, k))  # H⁻¹[Q, Q]  (m, k, k)
    both = valid[:, :, None] & valid[:, None, :]
    system = torch.where(both, system, torch.zeros((), dtype=torch.float64, device=w.device))
    system.diagonal(dim1=1, dim2=2).add_((~valid).to(torch.float64))
    factor, _ = damped_cholesky(system, name=name, what="OBS system")
    rhs = torch.where(valid, w.gather(1, first), 0.0).unsqueeze(-1)
    x = torch.cholesky_solve(rhs, factor)  # (m, k, 1), zero on the padding
    out = w - torch.bmm(rows.transpose(1, 2), x).squeeze(-1)  # H⁻¹ symmetric: H⁻¹[:, Q] = H⁻¹[Q, :]ᵀ
    removed = torch.zeros(m, b, dtype=torch.bool, device=w.device)
    removed.scatter_(1, first, valid)
    out.masked_fill_(removed, 0)
    return out
