"""The throwaway method's pruner."""

from __future__ import annotations

import torch

from hf_sparsify.methods.base import Pruner, PruningResult

from .config import RandomConfig


class RandomPruner(Pruner):
    """Zero a seeded random subset of the targeted weights (already-zero weights stay zero)."""

    config_class = RandomConfig
    needs_calibration_data = True

    @torch.no_grad()
    def prune(self, model, adapter, calibration, *, device, disable_tqdm=False):
        config: RandomConfig = self.config
        images = 0
        for index, batch in enumerate(calibration):
            if index >= config.reads_batches:
                break
            assert "labels" in batch
            images += batch["pixel_values"].shape[0]
        generator = torch.Generator().manual_seed(config.seed)
        result = PruningResult(method=config.method, info={"num_calibration_samples": images})
        for layer in adapter.select_layers(config.targets, config.ignore):
            weight = layer.weight
            keep = torch.rand(weight.shape, generator=generator) >= config.sparsity
            weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))
            result.layers[layer.name] = {"sparsity": float((weight == 0).float().mean())}
        result.summary["sparsity"] = config.sparsity
        return result
