"""The method contract, tested for every registered method on every family.

* The matrix: ``available_methods()`` × the five families (tiny models built from configs), each with the method's
  own ``quick_settings``: prune → save → strict one-call reload with equal logits → report → model card →
  compressed save and reload → one ``SparseTrainer`` step that keeps the masks. A new method joins the matrix by
  registering; nothing here names a method.
* The throwaway method (``tests/methods/throwaway``: one folder, one ``register_method`` line) works through
  ``prune()``, the CLI, save and strict reload, the card and a ``SparseTrainer`` schedule, with no other file
  touched.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

import hf_sparsify
from hf_sparsify import configuration
from hf_sparsify.configuration import available_methods, get_method
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values

FAMILIES = ["vit", "deit", "dinov2", "convnext", "convnextv2"]
THROWAWAY_PACKAGE = "tests.methods.throwaway"
THROWAWAY = "throwaway-random"


def _logits(model, pixel_values):
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values).logits


def _zero_masks(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() == 0 for name, p in model.named_parameters() if name.endswith("weight") and p.dim() >= 2}


class _Images(torch.utils.data.Dataset):
    def __init__(self, model, size: int = 8):
        self.batch = tiny_batches(model, num_batches=1, batch=size, seed=3)[0]

    def __len__(self):
        return self.batch["pixel_values"].shape[0]

    def __getitem__(self, index):
        return {"pixel_values": self.batch["pixel_values"][index], "labels": int(self.batch["labels"][index])}


def _training_args(output_dir, **overrides):
    import transformers

    kwargs = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True, report_to=[],
                  disable_tqdm=True, save_strategy="no", seed=0, dataloader_num_workers=0, max_steps=1)
    return transformers.TrainingArguments(**{**kwargs, **overrides})


def _quick_config(method: str):
    config_class = get_method(method).config_class
    return config_class(**config_class.quick_settings)


@pytest.fixture
def throwaway():
    """Import the throwaway method's folder (its one register line runs) and unregister it afterwards."""
    module = sys.modules.get(THROWAWAY_PACKAGE)
    importlib.reload(module) if module is not None else importlib.import_module(THROWAWAY_PACKAGE)
    assert THROWAWAY in available_methods()
    yield THROWAWAY
    configuration._METHODS.pop(THROWAWAY, None)


def check_contract(method: str, family: str, tmp_path) -> None:
    entry = get_method(method)
    config = _quick_config(method)
    model = make_tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny_batches(model, num_batches=4, batch=4) if entry.pruner_class.needs_calibration_data else None
    pruned = hf_sparsify.prune(model, config, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "prune() modified the input model"
    pixels = tiny_pixel_values(model)
    expected = _logits(pruned, pixels)

    # save -> strict one-call reload with equal logits
    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(folder)
    torch.testing.assert_close(_logits(reloaded, pixels), expected, rtol=0, atol=0)
    assert hf_sparsify.PruningConfig.from_pretrained(folder) == config

    # report: the method did something
    report = hf_sparsify.sparsity_report(reloaded)
    shrunk = any(s["units"] != s["dense_units"] for s in report.structures)
    assert report.sparsity > 0 or shrunk, f"{method} left the {family} model unchanged"

    # card: names the method and cites its paper
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert method in card and config.citation.bibtex.splitlines()[0] in card
    assert json.loads((folder / "sparsity_summary.json").read_text())["pruning"]["method"] == method

    # compressed save -> reload
    compact = tmp_path / "compressed"
    pruned.save_pretrained(compact, compressed=True)
    again = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(compact)
    torch.testing.assert_close(_logits(again, pixels), expected, rtol=0, atol=0)

    # one SparseTrainer step keeps the zeros (and the shapes)
    zeros = _zero_masks(reloaded)
    shapes = {k: v.shape for k, v in reloaded.state_dict().items()}
    trainer = hf_sparsify.SparseTrainer(model=reloaded, args=_training_args(tmp_path / "train"), train_dataset=_Images(reloaded))
    trainer.train()
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == shapes
    for name, param in reloaded.named_parameters():
        if name in zeros and zeros[name].any():
            assert bool((param.detach()[zeros[name]] == 0).all()), f"{name} lost its zeros in training"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", available_methods())
def test_every_method_on_every_family(method, family, tmp_path):
    check_contract(method, family, tmp_path)


def test_every_method_declares_the_contract():
    for method in available_methods():
        entry = get_method(method)
        cls = entry.config_class
        assert cls.method == method and cls.target_field in cls._field_names()
        assert cls.citation is not None and cls.citation.bibtex.startswith("@"), method
        assert cls.quick_settings and cls.demo_settings, method
        config = cls(**cls.quick_settings)
        assert isinstance(config.needs_labels(), bool) and config.effective_batch_size >= 1
        assert entry.pruner_class.config_class in cls.__mro__


# ------------------------------------------------------------------------------------------------ the throwaway method
def test_a_method_in_one_folder_works_through_prune_save_reload_and_the_card(throwaway, tmp_path):
    check_contract(throwaway, "vit", tmp_path)


def test_a_method_in_one_folder_works_through_the_cli(throwaway, tmp_path):
    from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR
    from hf_sparsify.cli import main

    output = tmp_path / "out"
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", throwaway, "--sparsity", "0.3", "--reads-batches", "2",
                 "--calibration", str(DEMO_DATA_DIR / "calibration.parquet"), "--output", str(output), "--disable-tqdm"])
    assert code == 0
    config = hf_sparsify.PruningConfig.from_pretrained(output)
    assert config.method == throwaway and config.sparsity == 0.3 and config.reads_batches == 2
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(output)
    assert hf_sparsify.sparsity_report(reloaded).sparsity == pytest.approx(0.3, abs=0.02)
    assert "random pruning (a test method)" in (output / "README.md").read_text(encoding="utf-8")


def test_a_method_in_one_folder_runs_in_a_sparse_trainer_schedule(throwaway, tmp_path):
    model = make_tiny_model("vit")
    schedule = hf_sparsify.PruningSchedule.gradual(initial_sparsity=0.2, final_sparsity=0.4, start=0, end=2, every=1, ramp="linear")
    config = get_method(throwaway).config_class(sparsity=0.4)
    trainer = hf_sparsify.SparseTrainer(model=model, args=_training_args(tmp_path, max_steps=4), train_dataset=_Images(model, 16),
                                        pruning_config=config, schedule=schedule)
    trainer.train()
    assert [round(r["sparsity"], 3) for r in trainer.pruning_history] == [0.2, 0.3, 0.4]
    assert hf_sparsify.sparsity_report(model).sparsity > 0.3
