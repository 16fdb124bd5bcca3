"""Strict loading everywhere: a checkpoint that lacks a tensor, has an extra one or a damaged file is an error for
dense, unstructured, structured and compressed checkpoints; a backbone loads from a classifier checkpoint; optional
files come from transformers' cached_file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTForImageClassification

import hf_sparsify
from hf_sparsify.io.load import SparseCheckpointError, from_pretrained_strict, optional_file
from tests.conftest import make_tiny_model, tiny_pixel_values
from tests.io.models import structured_model, unstructured_model

WEIGHTS = "model.safetensors"


def _drop_tensor(folder) -> str:
    """Rewrite the folder's safetensors without the first block's MLP output weight (``mlp.fc2`` once loaded)."""
    tensors = load_file(folder / WEIGHTS)
    name = next(k for k in tensors if k.endswith(("layer.0.output.dense.weight", "layers.0.mlp.fc2.weight")))
    del tensors[name]
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("kind", ["dense", "unstructured", "structured"])
def test_a_checkpoint_missing_a_tensor_is_refused(kind, tmp_path):
    if kind == "dense":
        make_tiny_model("vit").save_pretrained(tmp_path)  # plain transformers save: nothing hf_sparsify recorded
    else:
        (unstructured_model() if kind == "unstructured" else structured_model()).save_pretrained(tmp_path)
    _drop_tensor(tmp_path)
    with pytest.raises(SparseCheckpointError, match="missing keys: .*fc2.weight"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert issubclass(SparseCheckpointError, hf_sparsify.HfSparsifyError)


def test_an_unexpected_tensor_is_refused(tmp_path):
    unstructured_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / WEIGHTS)
    tensors["vit.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(SparseCheckpointError, match="unexpected keys: .*extra.weight"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_a_truncated_weights_file_is_refused(tmp_path):
    unstructured_model().save_pretrained(tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(SparseCheckpointError, match="truncated or damaged"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_a_compressed_folder_without_its_weights_file_is_refused(tmp_path):
    unstructured_model().save_pretrained(tmp_path, compressed=True)
    (tmp_path / "model.compressed.safetensors").unlink()
    with pytest.raises(SparseCheckpointError, match="has no model.compressed.safetensors"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_from_pretrained_strict_and_loading_info(tmp_path):
    model = make_tiny_model("vit")
    model.save_pretrained(tmp_path)
    loaded, info = from_pretrained_strict(ViTForImageClassification, tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = tiny_pixel_values(model)
    assert torch.equal(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    with pytest.raises(SparseCheckpointError, match="ignore_mismatched_sizes"):
        from_pretrained_strict(ViTForImageClassification, tmp_path, ignore_mismatched_sizes=True)
    # a classifier with another number of labels does not fit: mis-shaped tensors
    with pytest.raises(SparseCheckpointError, match="other shapes"):
        from_pretrained_strict(ViTForImageClassification, tmp_path, num_labels=3)


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_the_backbone_of_a_classifier_checkpoint_loads(kind, tmp_path):
    """AutoSparseModel takes the backbone of a classifier checkpoint: the head is left out, as transformers does."""
    model = unstructured_model() if kind == "unstructured" else structured_model()
    model.save_pretrained(tmp_path)
    backbone = hf_sparsify.AutoSparseModel.from_pretrained(tmp_path)
    assert type(backbone).__name__ == "ViTModel"
    x = tiny_pixel_values(model)
    with torch.no_grad():
        expected = model.vit(pixel_values=x).last_hidden_state
        assert torch.equal(backbone(pixel_values=x).last_hidden_state, expected)
    # but a backbone tensor missing from the checkpoint is still an error
    _drop_tensor(tmp_path)
    with pytest.raises(SparseCheckpointError, match="missing keys"):
        hf_sparsify.AutoSparseModel.from_pretrained(tmp_path)


def test_optional_files_come_from_cached_file(tmp_path):
    unstructured_model().save_pretrained(tmp_path)
    assert optional_file(tmp_path, "pruning_config.json") == str(tmp_path / "pruning_config.json")
    assert optional_file(tmp_path, "absent.json") is None
    assert optional_file(tmp_path / "no-such-folder", "pruning_config.json") is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json").write_text(json.dumps({}))
    assert optional_file(tmp_path, "x.json", {"subfolder": "sub"}) == str(tmp_path / "sub" / "x.json")
