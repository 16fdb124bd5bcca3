"""Shared by the VBP tests and the 2-process script."""

import torch

import hf_sparsify
from tests.conftest import make_tiny_model, tiny_batches

DISTRIBUTED_CASE = {"family": "vit", "num_batches": 5, "batch": 3}


def distributed_case():
    """A tiny ViT, 5 uneven-split calibration batches, a global VBP config."""
    model = make_tiny_model(DISTRIBUTED_CASE["family"], hidden_size=32, intermediate_size=96)
    batches = tiny_batches(model, num_batches=DISTRIBUTED_CASE["num_batches"], batch=DISTRIBUTED_CASE["batch"])
    config = hf_sparsify.VBPConfig(pruning_ratio=0.4, allocation="global")
    return model, batches, config


def synthetic_batches():
    """Float64 data with a large offset and uneven batch sizes (5 batches: 3 on rank 0, 2 on rank 1)."""
    g = torch.Generator().manual_seed(7)
    return [1e3 + torch.randn(n, 3, 4, generator=g, dtype=torch.float64) * torch.arange(1, 5) for n in (4, 1, 9, 2, 6)]


@torch.no_grad()
def make_constant_neurons(model, group, units, value=0.7):
    """Make ``units`` of an MLP group output a constant for every input (zero producer rows, bias ``value``)."""
    for name in group.producers:
        layer = model.get_submodule(name)
        layer.weight[units] = 0
        layer.bias[units] = value
