"""Slow, obviously-correct reference implementations the fast code is tested against.

Everything here works one item at a time in float64 numpy, with explicit inverses instead of clever updates, so
that each function can be checked by reading it against the papers' formulas.
"""

from __future__ import annotations

import itertools

import numpy as np

# ============================================================================================== CAP family
# Notation: a Fisher block F (B×B) and its weights w (B,). "pruned" marks weights that are already zero and
# must stay pruned.


def sherman_morrison_fisher_inverse(grads: np.ndarray, damp: float) -> np.ndarray:
    """Inverse of ``damp·I + (1/m) Σ_i g_i g_iᵀ`` built as the reference code does: start from ``I/damp`` and
    apply one Sherman–Morrison update per gradient ``g_i`` (rows of ``grads``, shape ``(m, B)``)."""
    m, b = grads.shape
    inverse = np.eye(b) / damp
    for g in grads.astype(np.float64):
        u = inverse @ g
        inverse = inverse - np.outer(u, u) / (m + g @ u)
    return inverse


def damped_fisher(grads: np.ndarray, damp: float) -> np.ndarray:
    """``damp·I + (1/m) Σ_i g_i g_iᵀ`` summed gradient by gradient."""
    m, b = grads.shape
    fisher = np.zeros((b, b))
    for g in grads.astype(np.float64):
        fisher += np.outer(g, g)
    return fisher / m + damp * np.eye(b)


def obs_eliminate(w: np.ndarray, fisher: np.ndarray, pruned: np.ndarray | None = None, nm: tuple[int, int] | None = None):
    """CAP's greedy elimination of one block, one weight at a time.

    At every step the inverse Fisher of the *remaining* weights is recomputed from scratch,
    ``inv(F[R, R])``, the remaining weight with the smallest ``w_j² / [inv]_jj`` (first index on ties) is removed,
    the others get the OBS update ``−(w_p / [inv]_pp) · inv[:, p]``, and the block's cumulative loss grows by
    ``½ w_p² / [inv]_pp``. Already-pruned weights are removed first, in index order, at zero loss.
    With ``nm=(M, quota)`` a group of M consecutive weights stops losing weights once ``quota`` are removed.

    Returns ``(order, cumloss, traces)``: ``traces[k]`` is the weight vector after ``k`` removals.
    """
    w = w.astype(np.float64).copy()
    b = len(w)
    pruned = np.zeros(b, bool) if pruned is None else pruned.astype(bool)
    remaining = list(range(b))
    removed_in_group: dict[int, int] = {}
    order, cumloss, traces = [], [], [w.copy()]
    total = 0.0

    def remove(p: int, loss: float) -> None:
        nonlocal total
        sub = np.linalg.inv(fisher[np.ix_(remaining, remaining)])
        i = remaining.index(p)
        delta = -(w[p] / sub[i, i]) * sub[:, i]
        for local, j in enumerate(remaining):
            w[j] += delta[local]
        w[p] = 0.0
        remaining.remove(p)
        total += loss
        order.append(p)
        cumloss.append(total)
        if nm is not None:
            removed_in_group[p // nm[0]] = removed_in_group.get(p // nm[0], 0) + 1
        traces.append(w.copy())

    for p in np.flatnonzero(pruned):
        remove(int(p), 0.0)
    while remaining:
        sub = np.linalg.inv(fisher[np.ix_(remaining, remaining)])
        best, best_rho = None, np.inf
        for local, j in enumerate(remaining):
            if nm is not None and removed_in_group.get(j // nm[0], 0) >= nm[1]:
                continue
            rho = w[j] ** 2 / sub[local, local]
            if rho < best_rho or best is None:
                best, best_rho = j, rho
        if best is None:
            break
        remove(best, best_rho / 2)
    return order, cumloss, traces


def obs_removal(w: np.ndarray, fisher: np.ndarray, removed) -> tuple[float, np.ndarray]:
    """The exact OBS loss and weights of removing the set ``removed`` from one block at once:
    ``L = ½ w_Qᵀ [(F⁻¹)_QQ]⁻¹ w_Q`` and ``w − F⁻¹[:, Q] [(F⁻¹)_QQ]⁻¹ w_Q`` (zero on ``Q``), the minimum of the
    quadratic model ``½ δwᵀ F δw`` over the changes ``δw`` that zero ``Q``."""
    q = sorted(int(i) for i in removed)
    hinv = np.linalg.inv(fisher)
    sub = hinv[np.ix_(q, q)]
    x = np.linalg.solve(sub, w[q])
    new = w - hinv[:, q] @ x
    new[q] = 0.0
    return 0.5 * float(w[q] @ x), new


def nm_exact(w: np.ndarray, fisher: np.ndarray, nm: tuple[int, int], pruned: np.ndarray | None = None) -> tuple[float, np.ndarray, tuple[int, ...]]:
    """The best N:M mask of one block by exhaustive search: every choice of ``quota`` removed weights in every
    group of ``M`` (already-pruned weights count in their group's quota and are always removed), scored by the
    exact OBS loss of removing them together (:func:`obs_removal`). ``nm=(M, quota)`` as in :func:`obs_eliminate`.
    ``C(M, quota)^(B/M)`` masks: small blocks only (B ≤ 16 for 2:4). Returns ``(loss, weights, removed)``."""
    m, quota = nm
    b = len(w)
    pruned = np.zeros(b, bool) if pruned is None else pruned.astype(bool)
    per_group = []
    for g in range(b // m):
        members = range(g * m, (g + 1) * m)
        forced = [j for j in members if pruned[j]]
        free = [j for j in members if not pruned[j]]
        need = max(0, quota - len(forced))
        per_group.append([tuple(forced) + c for c in itertools.combinations(free, need)])
    best = (np.inf, None, None)
    for choice in itertools.product(*per_group):
        removed = tuple(sorted(j for group in choice for j in group))
        loss, new = obs_removal(w.astype(np.float64), fisher, removed)
        if loss < best[0]:
            best = (loss, new, removed)
    return best


def global_counts(cumlosses: list[list[list[float]]], forced: list[list[int]], num_remove: int) -> list[list[int]]:
    """How many eliminations each block keeps: sort all (layer, block, step) scores, the forced steps scoring
    −∞, ties by (layer, block, step), and take the ``num_remove`` lowest."""
    items = []
    for layer, blocks in enumerate(cumlosses):
        for block, losses in enumerate(blocks):
            for step, loss in enumerate(losses):
                score = -np.inf if step < forced[layer][block] else loss
                items.append((score, layer, block, step))
    items.sort()
    counts = [[0] * len(blocks) for blocks in cumlosses]
    for _, layer, block, _ in items[:num_remove]:
        counts[layer][block] += 1
    return counts


def cap_prune_layers(layers, num_remove: int | list[int], nm: tuple[int, int] | None = None):
    """Full CAP on a few layers: ``layers`` is a list of ``(weights (n, B), fishers (n, B, B))``.

    ``num_remove`` is an int (global: one ranking over all layers) or a list (per layer). With ``nm`` every
    block is eliminated to the end of its N:M quota. Returns the new weights per layer.
    """
    runs = [[obs_eliminate(w, f, w == 0, nm) for w, f in zip(ws, fs)] for ws, fs in layers]
    if nm is not None:
        return [np.stack([traces[-1] for _, _, traces in blocks]) for blocks in runs]
    cumlosses = [[cum for _, cum, _ in blocks] for blocks in runs]
    forced = [[int((w == 0).sum()) for w in ws] for ws, _ in layers]
    if isinstance(num_remove, int):
        counts = global_counts(cumlosses, forced, num_remove)
    else:
        counts = [global_counts([c], [f], k)[0] for c, f, k in zip(cumlosses, forced, num_remove)]
    return [np.stack([traces[k] for (_, _, traces), k in zip(blocks, cs)]) for blocks, cs in zip(runs, counts)]


def woodfisher_prune_layers(layers, num_remove: int):
    """WoodFisher on a few layers (global ranking): saliency ``w²/(2[F⁻¹]_jj)`` once (already-zero weights
    first), remove the ``num_remove`` lowest, add up the single-weight OBS updates of the removed weights."""
    items = []
    inverses = [[np.linalg.inv(f) for f in fs] for _, fs in layers]
    for layer, (ws, _) in enumerate(layers):
        for block, w in enumerate(ws):
            for j, value in enumerate(w):
                score = -np.inf if value == 0 else value**2 / (2 * inverses[layer][block][j, j])
                items.append((score, layer, block, j))
    items.sort()
    chosen = {(layer, block, j) for _, layer, block, j in items[:num_remove]}
    out = []
    for layer, (ws, _) in enumerate(layers):
        new = ws.astype(np.float64).copy()
        for block, w in enumerate(ws):
            inv = inverses[layer][block]
            for j in range(len(w)):
                if (layer, block, j) in chosen:
                    new[block] -= (w[j] / inv[j, j]) * inv[:, j]
            for j in range(len(w)):
                if (layer, block, j) in chosen:
                    new[block, j] = 0.0
        out.append(new)
    return out


def woodfisher_nm_prune_layers(layers, nm: tuple[int, int]):
    """WoodFisher with an N:M mask ``nm = (N, M)``: in every group of M consecutive weights of a block, remove the
    already-zero weights and the lowest saliencies ``w²/(2[F⁻¹]_jj)`` until M − N are removed (ties by position),
    then add up the single-weight OBS updates of the removed weights of the block."""
    n_keep, m = nm
    out = []
    for ws, fs in layers:
        new = ws.astype(np.float64).copy()
        for block, (w, f) in enumerate(zip(ws, fs)):
            inv = np.linalg.inv(f)
            chosen = []
            for start in range(0, len(w), m):
                scores = sorted((-np.inf if w[j] == 0 else w[j] ** 2 / (2 * inv[j, j]), j) for j in range(start, start + m))
                zeros = [j for j in range(start, start + m) if w[j] == 0]
                chosen += sorted(set(j for _, j in scores[: m - n_keep]) | set(zeros))
            for j in chosen:
                new[block] -= (w[j] / inv[j, j]) * inv[:, j]
            new[block, chosen] = 0.0
        out.append(new)
    return out


def fastcap_prune(weights: np.ndarray, fisher_sum: np.ndarray, num_grads: int, sparsity: float, damp: float,
                  nm: tuple[int, int] | None = None, columns_per_step: int | None = None) -> np.ndarray:
    """FastCAP on one layer viewed as rows of B weights, column by column.

    ``F = 2·fisher_sum/m`` (dead columns: ``F_jj = 1`` and weights zeroed), plus ``damp·mean(diag F)·I``. Columns
    are frozen left to right; pruning ``w[r, i]`` compensates the not-yet-frozen columns ``i..B−1`` with the OBS
    update computed from ``inv(F[i:, i:])``. The mask of a column step keeps the highest ``w²/[inv(F[j:, j:])]_00``
    (``round(s·size)`` removed, ties by position) or, for N:M ``(N, M)``, ``M − N`` per group of M per row.
    """
    w = weights.astype(np.float64).copy()
    rows, b = w.shape
    fisher = 2.0 * fisher_sum.astype(np.float64) / num_grads
    dead = np.diag(fisher) == 0
    for j in np.flatnonzero(dead):
        fisher[j, j] = 1.0
        w[:, j] = 0.0
    fisher = fisher + damp * np.mean(np.diag(fisher)) * np.eye(b)
    forced = (w == 0)
    tails = [np.linalg.inv(fisher[i:, i:]) for i in range(b)]
    d = np.array([tails[i][0, 0] for i in range(b)])
    step = columns_per_step or b
    for c1 in range(0, b, step):
        c2 = min(c1 + step, b)
        remove = np.zeros((rows, c2 - c1), bool)
        if nm is None:
            entries = []
            for r in range(rows):
                for i in range(c1, c2):
                    score = -np.inf if forced[r, i] else w[r, i] ** 2 / d[i]
                    entries.append((score, r, i))
            entries.sort(key=lambda e: (e[0], e[1] * b + e[2]))
            k = max(int(round(len(entries) * sparsity)), int(forced[:, c1:c2].sum()))
            for _, r, i in entries[:k]:
                remove[r, i - c1] = True
        for i in range(c1, c2):
            if nm is not None and (i - c1) % nm[1] == 0:
                n_keep, m = nm
                for r in range(rows):
                    scores = [(-np.inf if forced[r, j] else w[r, j] ** 2 / d[j], j) for j in range(i, i + m)]
                    scores.sort()
                    for rank, (_, j) in enumerate(scores):
                        remove[r, j - c1] = rank < m - n_keep or forced[r, j]
            for r in range(rows):
                if remove[r, i - c1]:
                    delta = -(w[r, i] / tails[i][0, 0]) * tails[i][0, :]
                    w[r, i:] += delta
                    w[r, i] = 0.0
    return w
