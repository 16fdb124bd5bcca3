"""prune(): inputs, calibration handling and the errors users meet."""

import pytest
import torch

import hf_sparsify
from hf_sparsify import CalibrationDataError, MagnitudeConfig
from hf_sparsify.adapters import UnsupportedModelError
from tests.conftest import LossConfig, make_tiny_model, tiny_batches


@pytest.fixture(autouse=True)
def _loss_method(loss_method):
    """Every test here may use the test-only "test-loss" method (registered for the test, then removed)."""
    yield


_LossConfig = LossConfig


def test_prune_accepts_config_dicts_and_files(tmp_path):
    model = make_tiny_model("vit")
    a = hf_sparsify.prune(model, {"method": "magnitude", "sparsity": 0.4})
    MagnitudeConfig(sparsity=0.4).save_pretrained(tmp_path)
    b = hf_sparsify.prune(model, tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert isinstance(b.pruning_config, MagnitudeConfig)


def test_unknown_model_type_fails_before_any_work():
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    with pytest.raises(UnsupportedModelError, match="Supported model types"):
        hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5))
    pruned = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, targets=[r"convolution$"]))
    assert hf_sparsify.sparsity_report(pruned).sparsity > 0.2


def test_method_needing_data_refuses_none():
    with pytest.raises(CalibrationDataError, match="reads calibration data"):
        hf_sparsify.prune(make_tiny_model("vit"), _LossConfig())


def test_labels_missing_when_a_loss_is_needed():
    model = make_tiny_model("vit")
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model)]
    with pytest.raises(CalibrationDataError, match="needs a loss.*labels"):
        hf_sparsify.prune(model, _LossConfig(), batches)


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "empty"),
        ([{"pixel_values": torch.randn(3, 16, 16), "labels": torch.tensor([0])}], "batch dimension"),
        ([{"pixel_values": torch.randn(2, 16, 16, 3), "labels": torch.tensor([0, 1])}], "channels"),
        ([{"pixel_values": torch.randn(0, 3, 16, 16), "labels": torch.zeros(0, dtype=torch.long)}], "empty"),
        ([{"image": torch.randn(2, 3, 16, 16)}], "no 'pixel_values'"),
        ([{"pixel_values": torch.randn(2, 3, 16, 16), "labels": torch.tensor([[0], [1]])}], "one class index per image"),
        (["not a batch"], "must be a dict"),
        (42, "not supported"),
    ],
)
def test_bad_calibration_data(data, message):
    with pytest.raises(CalibrationDataError, match=message):
        hf_sparsify.prune(make_tiny_model("vit"), _LossConfig(), data)


def test_calibration_sources_list_loader_tuple_generator():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=3)
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.cat([b["pixel_values"] for b in batches]), torch.cat([b["labels"] for b in batches])), batch_size=4)
    results = []
    for source in (batches, loader, (b for b in batches)):
        pruned = hf_sparsify.prune(model, _LossConfig(), source)
        results.append(pruned.pruning_result.info)
    assert results[0]["batches"] == 3 and results[0] == results[1] == results[2]


def test_num_calibration_samples_limits_iterables():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, _LossConfig(num_calibration_samples=6), tiny_batches(model, num_batches=3))
    assert pruned.pruning_result.info["batches"] == 2  # 4 + 2 samples


def test_dataset_with_images_goes_through_the_image_processor(demo_model, demo_processor, demo_calibration):
    pruned = hf_sparsify.prune(demo_model, _LossConfig(num_calibration_samples=40, calibration_batch_size=16), demo_calibration, image_processor=demo_processor)
    assert pruned.pruning_result.info["batches"] == 3
    # the model's own processor is found from its path when none is given
    pruned = hf_sparsify.prune(demo_model, _LossConfig(num_calibration_samples=16, calibration_batch_size=16), demo_calibration)
    assert pruned.pruning_result.info["batches"] == 1


def test_dataset_dict_asks_for_a_split(demo_calibration):
    import datasets

    with pytest.raises(CalibrationDataError, match="pick one"):
        hf_sparsify.prune(make_tiny_model("vit"), _LossConfig(), datasets.DatasetDict({"train": demo_calibration}))


def test_device_argument_runs_on_cpu():
    pruned = hf_sparsify.prune(make_tiny_model("vit"), MagnitudeConfig(sparsity=0.5), device="cpu")
    assert next(pruned.parameters()).device.type == "cpu"


# --------------------------------------------------------------------------------------------- pruning history
def test_each_prune_call_records_a_step_in_the_history():
    model = make_tiny_model("vit")
    once = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.3))
    twice = hf_sparsify.prune(once, MagnitudeConfig(sparsity=0.6))
    history = twice.config.hf_sparsify["history"]
    assert [(s["method"], s["config"]["sparsity"]) for s in history] == [("magnitude", 0.3), ("magnitude", 0.6)]
    assert len(once.config.hf_sparsify["history"]) == 1  # the input model is left untouched


def test_cap_then_vbp_history_records_the_calibration_images_actually_used():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=2, batch=4)  # 8 images
    cap = hf_sparsify.prune(model, hf_sparsify.CAPConfig(**hf_sparsify.CAPConfig.quick_settings), batches)
    # VBP is asked for 64 images but only 8 exist: the history says 8
    vbp = hf_sparsify.prune(cap, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=64), batches)
    history = vbp.config.hf_sparsify["history"]
    assert [s["method"] for s in history] == ["cap", "vbp"]
    assert history[1]["num_calibration_samples"] == 8 and history[1]["config"]["num_calibration_samples"] == 64
    assert vbp.config.hf_sparsify["method"] == "vbp" and vbp.pruning_config.method == "vbp"


def test_a_checkpoint_without_history_starts_it_with_its_recorded_method(tmp_path):
    """Checkpoints saved before the history existed name their method only: pruning them again credits both."""
    import json

    hf_sparsify.prune(make_tiny_model("vit"), MagnitudeConfig(sparsity=0.3)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["hf_sparsify"]["history"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    again = hf_sparsify.prune(loaded, MagnitudeConfig(sparsity=0.5))
    history = again.config.hf_sparsify["history"]
    assert [(s["method"], s["config"]["sparsity"]) for s in history] == [("magnitude", 0.3), ("magnitude", 0.5)]
