"""Small pruned models for the io and hub tests."""

from __future__ import annotations

import torch

from tests.conftest import make_tiny_model


def unstructured_model(seed: int = 0):
    """A tiny ViT, magnitude-pruned to 50% (what hf_sparsify.prune returns)."""
    import hf_sparsify

    return hf_sparsify.prune(make_tiny_model("vit", seed=seed), hf_sparsify.MagnitudeConfig(sparsity=0.5))


def structured_model(seed: int = 0):
    """A tiny ViT with MLP neurons and heads removed by hand with surgery.keep_units, as VBP does."""
    import hf_sparsify
    from hf_sparsify.adapters import ATTENTION_HEAD, MLP_NEURON
    from hf_sparsify.pruned import attach_pruning_state
    from hf_sparsify.surgery import keep_units, record_shapes

    model = make_tiny_model("vit", seed=seed)
    adapter = hf_sparsify.get_adapter(model)
    for i, group in enumerate(adapter.structure_groups([MLP_NEURON])):
        keep_units(model, group, torch.arange(0, group.num_units - 8 * (i + 1)))
    for group in adapter.structure_groups([ATTENTION_HEAD])[:1]:
        keep_units(model, group, torch.tensor([0, 2, 3]))
    attach_pruning_state(model, hf_sparsify.VBPConfig(pruning_ratio=0.25))
    model.pruning_structured = True
    record_shapes(model)
    return model
