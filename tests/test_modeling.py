"""The one-call loaders: a reloaded model owns aligned memory (so it computes exactly as the model that was saved),
and a DINOv3 backbone, which has no classification class, loads with AutoSparseModel."""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_sparsify
from hf_sparsify.adapters import UnsupportedModelError
from tests.conftest import make_tiny_model


def test_reloaded_tensors_are_aligned_and_own_their_memory(tmp_path):
    model = make_tiny_model("convnext")
    hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5)).save_pretrained(tmp_path)
    plain = transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    # transformers leaves tensors where the safetensors file has them: 8-byte aligned, some not 64-byte aligned
    assert any(t.data_ptr() % 64 for t in plain.state_dict().values() if t.numel())
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert all(t.data_ptr() % 64 == 0 for t in [*reloaded.parameters(), *reloaded.buffers()] if t.numel())


def test_a_dinov3_backbone_loads_with_auto_sparse_model_only(tmp_path):
    config = transformers.DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16)
    model = transformers.DINOv3ViTModel(config).eval()
    hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5)).save_pretrained(tmp_path)
    assert type(hf_sparsify.AutoSparseModel.from_pretrained(tmp_path)) is transformers.DINOv3ViTModel
    with pytest.raises(UnsupportedModelError, match=r"no image-classification class for DINOv3ViTConfig .*AutoSparseModel\.from_pretrained"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_an_architecture_without_an_adapter_pruned_with_targets_reloads_in_one_call(tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = transformers.ResNetForImageClassification(config).eval()
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5, targets=[r"layer\.\d\.convolution$"]))
    pruned.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(pixel_values=x).logits
        reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(reloaded(pixel_values=x).logits, expected)
        plain = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(plain(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)
    assert hf_sparsify.sparsity_report(reloaded).sparsity > 0  # the targeted convolutions, among every layer
