"""Magnitude pruning: the baseline every method is compared with."""

from __future__ import annotations

import torch

from ...surgery import apply_masks, check_nm, lowest_k_masks, nm_mask
from ...utils import progress
from ..base import Pruner, PruningError, PruningResult
from .config import MagnitudeConfig


def check_finite_weights(layers) -> None:
    """Refuse layers holding NaN or inf: their magnitudes cannot be ranked (a NaN would silently survive)."""
    for layer in layers:
        weight = layer.weight.detach()
        if not bool(torch.isfinite(weight).all()):
            bad = int((~torch.isfinite(weight)).sum())
            raise PruningError(
                f"Layer {layer.name} holds {bad} NaN or inf weight(s), so its magnitudes cannot be ranked: the checkpoint "
                "is damaged or diverged. Load an intact checkpoint, or leave the layer out with ignore=[...]."
            )


class MagnitudePruner(Pruner):
    """Removes the weights of smallest absolute value: per layer, globally, or inside N:M groups."""

    config_class = MagnitudeConfig

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False) -> PruningResult:
        config: MagnitudeConfig = self.config
        layers = adapter.select_layers(config.targets, config.ignore)
        check_finite_weights(layers)
        result = PruningResult(method=config.method)
        weights = [layer.weight for layer in layers]
        with result.timed("selection"):
            if config.nm is not None:
                n, m = config.nm
                masks = []
                for layer in progress(layers, desc="magnitude N:M", disable=disable_tqdm):
                    check_nm(layer.weight.shape, m, layer.name)
                    masks.append(nm_mask(layer.weight.abs(), n, m))
            elif config.sparsity_distribution == "global":
                total = sum(w.numel() for w in weights)
                masks = lowest_k_masks([w.abs() for w in weights], round(config.sparsity * total))
            else:
                masks = [lowest_k_masks([w.abs()], round(config.sparsity * w.numel()))[0] for w in weights]
        apply_masks(weights, masks)
        for layer, mask in zip(layers, masks):
            result.layers[layer.name] = {"sparsity": 1.0 - mask.float().mean().item(), "numel": mask.numel()}
        total = sum(mask.numel() for mask in masks)
        result.summary["sparsity"] = sum(int((~mask).sum()) for mask in masks) / total if total else 0.0
        return result
