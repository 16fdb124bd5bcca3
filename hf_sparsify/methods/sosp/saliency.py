"""SOSP's saliencies and loss-change predictions: plain functions on tensors in gate space.

Structures are gated on their outgoing weights, ``θ(γ) = θ_rest + Σ_s γ_s θ_s`` (see
:mod:`hf_sparsify.observers.gates`), so with the gate gradient ``g`` and gate Hessian ``G`` at ``γ = 1``, removing a
set ``P`` of structures changes the loss by

    δL(P) ≈ −Σ_{s∈P} g_s + ½ Σ_{s,t∈P} G_st          (:func:`predicted_loss_change`; exact for a quadratic loss)

Choosing ``P`` exactly is a quadratic combinatorial problem; SOSP makes it separable with one saliency per structure
(higher = more important, removed last), ranked globally:

* **SOSP-H** (:func:`sosp_h_saliency`), from ``g`` and the row sums ``(G·1)_s = Σ_t G_st`` (one Hessian-vector
  product): ``"sum_of_abs"`` ``|g_s| + ½|(G·1)_s|`` or ``"abs_of_sum"`` ``|−g_s + ½(G·1)_s|`` — structure ``s``'s
  share of the loss change when every structure is removed, ``δL(all) = Σ_s (−g_s + ½(G·1)_s)``;
* **SOSP-I** (:func:`sosp_i_saliency`), from the whole matrix: ``|g_s| + ½ Σ_t |G_st|``, an upper bound of ``s``'s
  share of ``δL(P)`` for any ``P`` holding it (triangle inequality).

``first_order=False`` drops the ``g`` terms (at a minimum of the loss, or with ``loss="kl"``, ``g = 0``).

```python
>>> import torch
>>> from hf_sparsify.methods.sosp.saliency import predicted_loss_change, sosp_h_saliency, sosp_i_saliency
>>> g = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
>>> G = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.5], [0.0, -0.5, 4.0]], dtype=torch.float64)
>>> sosp_h_saliency(g, G.sum(1), form="abs_of_sum").tolist()
[1.15, 0.7, 1.75]
>>> sosp_i_saliency(g, G).tolist()
[1.35, 1.2, 2.25]
>>> round(float(predicted_loss_change(g, G, torch.tensor([True, True, False]))), 6)   # −(0.1 − 0.2) + ½ (2 + 1 + 2·0.5)
2.1
```
"""

from __future__ import annotations

import torch

__all__ = ["SALIENCY_FORMS", "predicted_loss_change", "sosp_h_saliency", "sosp_i_saliency"]

#: SOSP-H's saliency forms: ``|g| + ½|G·1|`` and ``|−g + ½ G·1|``
SALIENCY_FORMS = ("sum_of_abs", "abs_of_sum")


def sosp_h_saliency(gradient: torch.Tensor, row_sums: torch.Tensor, *, form: str = "sum_of_abs", first_order: bool = True) -> torch.Tensor:
    """SOSP-H's saliency of every structure from the gate gradient ``g`` and the Hessian row sums ``G·1`` (float64).

    Args:
        gradient: ``g``, one value per structure.
        row_sums: ``(G·1)_s``, one value per structure.
        form: ``"sum_of_abs"``: ``|g_s| + ½|(G·1)_s|``; ``"abs_of_sum"``: ``|−g_s + ½(G·1)_s|``.
        first_order: keep the ``g`` terms.
    """
    if form not in SALIENCY_FORMS:
        raise ValueError(f"form={form!r} is not one of {list(SALIENCY_FORMS)}")
    g = gradient.to(torch.float64) if first_order else torch.zeros_like(gradient, dtype=torch.float64)
    half = 0.5 * row_sums.to(torch.float64)
    if form == "sum_of_abs":
        return g.abs() + half.abs()
    return (half - g).abs()


def sosp_i_saliency(gradient: torch.Tensor, gauss_newton: torch.Tensor, *, first_order: bool = True, chunk: int = 4096) -> torch.Tensor:
    """SOSP-I's saliency ``|g_s| + ½ Σ_t |G_st|`` of every structure (float64), summing ``chunk`` rows of ``G`` at a
    time (``G`` may be the size of the memory)."""
    sums = torch.cat([rows.abs().sum(1, dtype=torch.float64) for rows in gauss_newton.split(chunk, dim=0)]) if gauss_newton.numel() else gauss_newton.new_zeros(0, dtype=torch.float64)
    first = gradient.to(torch.float64).abs() if first_order else torch.zeros_like(sums)
    return first.to(sums.device) + 0.5 * sums


def predicted_loss_change(gradient: torch.Tensor, hessian: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``δL(P) = −Σ_{s∈P} g_s + ½ Σ_{s,t∈P} G_st``: the second-order prediction of the loss change when the
    structures where ``removed`` is true are removed (float64; exact when the loss is quadratic in the gates)."""
    mask = removed.to(device=hessian.device, dtype=torch.bool)
    g = gradient.to(device=hessian.device, dtype=torch.float64)[mask]
    block = hessian[mask][:, mask].to(torch.float64)
    return -g.sum() + 0.5 * block.sum()
