"""Cases shared by the SOSP tests and the 2-process script."""

from __future__ import annotations

import torch

import hf_sparsify
from tests.conftest import make_tiny_model, tiny_batches


def float64_batches(model, num_batches: int = 2, batch: int = 3, labels: bool = True, seed: int = 0):
    batches = tiny_batches(model, num_batches=num_batches, batch=batch, seed=seed)
    for b in batches:
        b["pixel_values"] = b["pixel_values"].double()
        if not labels:
            del b["labels"]
    return batches


def distributed_cases():
    """``{name: (model, batches, config)}``: SOSP-H and SOSP-I on float64 tiny models, 6 batches of 3 images."""
    cases = {}
    for name, family, config in (
        ("sosp-h vit", "vit", hf_sparsify.SOSPHConfig(pruning_ratio=0.3, round_to=1, min_neurons_per_layer=1, calibration_batch_size=3)),
        ("sosp-i convnext", "convnext", hf_sparsify.SOSPIConfig(pruning_ratio=0.3, round_to=1, min_neurons_per_layer=1, calibration_batch_size=3)),
        ("sosp-h dinov2 kl", "dinov2", hf_sparsify.SOSPHConfig(pruning_ratio=0.3, budget_unit="structures", loss="kl", round_to=1, min_neurons_per_layer=1, calibration_batch_size=3)),
    ):
        model = make_tiny_model(family).double()
        cases[name] = (model, float64_batches(model, num_batches=6), config)
    return cases


def saliencies(pruned) -> dict[str, float]:
    return {name: facts["removed_saliency"] for name, facts in pruned.pruning_result.layers.items()}


__all__ = ["distributed_cases", "float64_batches", "saliencies", "torch"]
