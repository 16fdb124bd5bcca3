"""The calibration loss that scores an SPDY profile, shared by the structured (widths) and the unstructured
(sparsity levels) flows: the search's images (one pass of the calibration data, kept in memory), and the loss of a
stitched model on them — cross-entropy with labels, else KL divergence from the dense model's outputs (half the
squared feature distance for a backbone)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...data import CalibrationDataError
from ...observers.gradients import model_features
from ..base import PruningError

__all__ = ["calibration_loss", "calibration_set"]


@torch.no_grad()
def calibration_set(model: nn.Module, calibration, loss: str = "auto") -> tuple[str, list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """The search's images (one pass of ``calibration``, kept), which loss scores a profile (``loss``: ``"auto"``,
    ``"labels"`` or ``"kl"``; ``"auto"`` is ``"labels"`` when every batch has labels and the model has a
    classification head, else ``"kl"``), and the dense model's outputs on them (for ``"kl"``)."""
    batches = [{k: v for k, v in batch.items() if k in ("pixel_values", "labels")} for batch in calibration]
    if not batches:
        raise CalibrationDataError("SPDY's calibration data yielded no batch.")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    first = model(pixel_values=batches[0]["pixel_values"].to(device=device, dtype=dtype))
    has_logits = (first.get("logits") if isinstance(first, dict) else getattr(first, "logits", None)) is not None
    labelled = all("labels" in b for b in batches)
    if loss == "labels" and not (labelled and has_logits):
        raise CalibrationDataError("SPDY loss='labels' needs labelled calibration images and a model with a classification head; use loss='kl'.")
    kind = "labels" if loss == "labels" or (loss == "auto" and labelled and has_logits) else "kl"
    reference = []
    if kind == "kl":
        for batch in batches:
            out = model_features(model(pixel_values=batch["pixel_values"].to(device=device, dtype=dtype)))
            reference.append(out.detach().to(torch.promote_types(out.dtype, torch.float32)))
    return kind, batches, reference


@torch.no_grad()
def calibration_loss(model: nn.Module, kind: str, batches, reference) -> float:
    """The mean loss per image of ``model`` on ``batches`` (from :func:`calibration_set`), accumulated in float32 or
    better whatever the model's dtype.

    Raises:
        PruningError: the loss is not finite (a half-precision model that overflows).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    total, count = 0.0, 0
    for index, batch in enumerate(batches):
        features = model_features(model(pixel_values=batch["pixel_values"].to(device=device, dtype=dtype)))
        features = features.to(torch.promote_types(features.dtype, torch.float32))
        n = features.shape[0]
        if kind == "labels":
            value = torch.nn.functional.cross_entropy(features, batch["labels"].to(device), reduction="sum")
        elif features.dim() == 2:  # logits: KL(p_dense ‖ p)
            value = torch.nn.functional.kl_div(features.log_softmax(-1), reference[index].log_softmax(-1), log_target=True, reduction="sum")
        else:  # features: ½‖f − f_dense‖² per image
            value = 0.5 * (features - reference[index]).square().sum()
        total += float(value)
        count += n
    loss = total / max(count, 1)
    if not math.isfinite(loss):
        raise PruningError(f"SPDY's calibration loss of a stitched model is not finite ({loss}): prune a float32 copy of the model.")
    return loss
