"""examples/finetune_cifar10.py end to end with tiny settings (needs ../shared's CIFAR-10)."""

import importlib.util
import json
from pathlib import Path

import pytest

import hf_sparsify

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_cifar10.py"


@pytest.mark.slow
def test_finetune_cifar10_example_runs_and_saves_a_reloadable_model(cifar10_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("finetune_cifar10", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main([
        "--data", str(cifar10_dir), "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1", "--train-samples", "256",
        "--eval-samples", "200", "--batch-size", "64", "--output-dir", str(tmp_path / "run"),
    ])
    assert results["dense"]["num_samples"] == 200 and 0.5 < results["dense"]["accuracy"] < 0.9
    assert results["measured_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results["optimizer_steps"] == 4 and "recovered" in results and "one_shot" in results
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "magnitude"
    model = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "run" / "model")
    assert model.pruning_config.sparsity == pytest.approx(0.5)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "SparseTrainer" in card and "Recovery fine-tuning" in card
