"""Saving writes a folder's files as one unit: a save that fails half-way leaves the folder as it was, the previous
version's weight files go, files hf_sparsify does not write stay, and nothing hidden is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import hf_sparsify
from hf_sparsify.hub import CARD_NAME, CHART_NAME
from hf_sparsify.io.save import STAGING_PREFIX, StagedFolder, is_weights_file
from tests.conftest import tiny_pixel_values
from tests.io.models import structured_model, unstructured_model


def _tree(folder):
    """Every file under ``folder`` (hidden ones included) with its digest."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_template(tmp_path):
    template = tmp_path / "bad_card.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ no_such_field }}\n")
    return template


def test_a_save_failing_after_the_weights_leaves_the_previous_model(tmp_path):
    """The card is rendered after the weights and the summary are written: a failure there used to leave the new
    weights beside the previous model's card and summary."""
    folder = tmp_path / "model"
    first = unstructured_model(seed=0)
    first.pruning_metrics = {"after": {"accuracy": 0.5}}
    first.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text("{}")  # a file hf_sparsify does not write
    before = _tree(folder)
    second = structured_model(seed=1)
    with pytest.raises(hf_sparsify.ModelCardTemplateError):
        second.save_pretrained(folder, card_template=_bad_template(tmp_path))
    assert _tree(folder) == before
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(folder)
    x = tiny_pixel_values(first)
    assert torch.equal(reloaded(pixel_values=x).logits, first(pixel_values=x).logits)


def test_a_failed_save_into_a_new_folder_leaves_nothing(tmp_path):
    with pytest.raises(hf_sparsify.ModelCardTemplateError):
        unstructured_model().save_pretrained(tmp_path / "new" / "model", card_template=_bad_template(tmp_path))
    assert not (tmp_path / "new" / "model").exists()


def test_bad_card_data_fails_before_anything_is_written(tmp_path):
    unstructured_model().save_pretrained(tmp_path)
    before = _tree(tmp_path)
    pruned = unstructured_model(seed=1)
    pruned.pruning_metrics = {"after": {"accuracy": 72.5}}  # a percentage
    with pytest.raises(ValueError, match="0.725"):
        pruned.save_pretrained(tmp_path)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("first, second", [("dense", "compressed"), ("compressed", "dense"), ("sharded", "dense"), ("dense", "sharded")])
def test_the_previous_version_weights_are_replaced(first, second, tmp_path):
    def save(model, how):
        if how == "compressed":
            model.save_pretrained(tmp_path, compressed=True)
        elif how == "sharded":
            model.save_pretrained(tmp_path, max_shard_size="20KB")
        else:
            model.save_pretrained(tmp_path)

    save(unstructured_model(seed=0), first)
    (tmp_path / "notes.txt").write_text("mine")
    model = unstructured_model(seed=1)
    save(model, second)
    weights = sorted(p.name for p in tmp_path.iterdir() if is_weights_file(p.name))
    expected = {
        "dense": ["model.safetensors"],
        "compressed": ["model.compressed.safetensors"],
    }.get(second)
    if expected:
        assert weights == expected
    else:
        assert "model.safetensors.index.json" in weights and len(weights) > 2 and "model.safetensors" not in weights
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == [w for w in weights if w.endswith(".safetensors")]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert torch.equal(loaded(pixel_values=x).logits, model(pixel_values=x).logits)


def test_card_false_removes_the_previous_generated_card_but_never_a_users(tmp_path):
    unstructured_model().save_pretrained(tmp_path)
    assert (tmp_path / CARD_NAME).exists() and (tmp_path / CHART_NAME).exists()
    unstructured_model(seed=1).save_pretrained(tmp_path, card=False)
    assert not (tmp_path / CARD_NAME).exists() and not (tmp_path / CHART_NAME).exists()
    (tmp_path / CARD_NAME).write_text("# mine\n")
    unstructured_model().save_pretrained(tmp_path, card=False)
    unstructured_model().save_pretrained(tmp_path)
    assert (tmp_path / CARD_NAME).read_text() == "# mine\n"


def test_the_card_sees_files_already_in_the_folder(tmp_path, demo_model_dir):
    """The card is written in the staging folder: it still shows the processor snippet for a processor saved
    beforehand into the destination (as the CLI and the demo do)."""
    from transformers import AutoImageProcessor

    AutoImageProcessor.from_pretrained(demo_model_dir).save_pretrained(tmp_path)
    unstructured_model().save_pretrained(tmp_path)
    assert f'AutoImageProcessor.from_pretrained("{tmp_path.name}")' in (tmp_path / CARD_NAME).read_text()


def test_staged_folder_swaps_and_rolls_back(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "model.safetensors").write_text("old weights")
    (tmp_path / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="boom"):
        with StagedFolder(tmp_path) as staged:
            (staged.path / "a.txt").write_text("new a")
            raise RuntimeError("boom")
    assert _tree(tmp_path) == {"a.txt": hashlib.sha256(b"old a").hexdigest(), "keep.txt": hashlib.sha256(b"keep").hexdigest(), "model.safetensors": hashlib.sha256(b"old weights").hexdigest()}
    with StagedFolder(tmp_path) as staged:
        (staged.path / "a.txt").write_text("new a")
        (staged.path / "model.compressed.safetensors").write_text("new weights")
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "keep.txt", "model.compressed.safetensors"]
    assert (tmp_path / "a.txt").read_text() == "new a"


def test_staging_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"{STAGING_PREFIX}{dead}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-def"  # a save in progress in a live process is left alone
    alive.mkdir()
    unstructured_model().save_pretrained(tmp_path)
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.safetensors", True),
        ("model-00001-of-00003.safetensors", True),
        ("model.safetensors.index.json", True),
        ("model.fp16.safetensors", True),
        ("model.compressed.safetensors", True),
        ("pytorch_model.bin", True),
        ("pytorch_model-00002-of-00002.bin", True),
        ("pytorch_model.bin.index.json", True),
        ("tf_model.h5", True),
        ("flax_model.msgpack", True),
        ("config.json", False),
        ("sparsity_summary.json", False),
        ("my_model.safetensors", False),
        ("sub/model.safetensors", False),
    ],
)
def test_weights_file_names(name, expected):
    assert is_weights_file(name) is expected


def test_a_save_is_complete_or_leaves_the_folder_as_it_was_for_a_non_vision_model(tmp_path):
    """prune(..., targets=...) on a text model: its summary could not be built (the MACs count feeds pixel_values)
    after transformers had written the weights, leaving the new weights beside the previous model's record."""
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100))
    pruned = hf_sparsify.prune(bert, hf_sparsify.MagnitudeConfig(sparsity=0.5, targets=[r"dense$"]))
    unstructured_model().save_pretrained(tmp_path)
    before = _tree(tmp_path)
    try:
        pruned.save_pretrained(tmp_path)
    except Exception:  # noqa: BLE001 - whichever error: the previous model must be intact
        assert _tree(tmp_path) == before
    else:  # once the summary can be built for any model: a complete new set
        assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
        assert json.loads((tmp_path / "sparsity_summary.json").read_text())["pruning"]["method"] == "magnitude"
        assert "bert" in (tmp_path / CARD_NAME).read_text()
