"""examples/finetune_cifar10.py end to end with tiny settings (needs ../shared's CIFAR-10): the documented command runs
as a user runs it, and the model it saves works with ``pipeline()`` and ``hf-sparsify evaluate``."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_sparsify
from hf_sparsify.assets import DEMO_DATA_DIR, demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "finetune_cifar10.py"
# appended to the documented command (argparse keeps the last value): a few optimizer steps instead of minutes
TINY = ["--train-samples", "256", "--eval-samples", "100", "--batch-size", "64"]


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_cifar10", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def documented_small_command() -> list[str]:
    """The "Small settings for a CPU" command of the example's docstring, as a list of arguments."""
    lines = EXAMPLE.read_text(encoding="utf-8").split('"""')[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Small settings"))
    command = next(line.strip() for line in lines[start + 1 :] if line.strip())
    assert command.startswith("python examples/finetune_cifar10.py "), command
    return shlex.split(command)[2:]


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), "HF_SPARSIFY_DISABLE_TQDM": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_finetune_cifar10_example_runs_and_saves_a_reloadable_model(cifar10_dir, tmp_path):
    results = load_example().main([
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


@pytest.mark.slow
def test_the_documented_small_command_saves_a_model_that_pipeline_and_evaluate_load(cifar10_dir, tmp_path):
    done = run_python([str(EXAMPLE), *documented_small_command(), *TINY, "--output-dir", str(tmp_path / "run")], cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "run" / "model"
    assert {"config.json", "model.safetensors", "pruning_config.json", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "magnitude" and results["measured_sparsity"] == pytest.approx(0.7, abs=1e-3)

    # transformers' pipeline loads the saved model with its image processor and classifies an image
    from transformers import pipeline

    image = demo_dataset("evaluation")[0]["image"]
    predictions = pipeline("image-classification", model=str(folder), device="cpu")(image, top_k=10)
    model = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(folder).eval()
    assert sorted(p["label"] for p in predictions) == sorted(model.config.id2label.values())
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    processor = __import__("transformers").AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits[0]
    assert predictions[0]["label"] == model.config.id2label[int(logits.argmax())]

    # and so does hf-sparsify evaluate
    evaluated = run_python(
        ["-m", "hf_sparsify.cli", "evaluate", str(folder), "--data", str(DEMO_DATA_DIR / "evaluation.parquet"), "--limit", "50", "--disable-tqdm"],
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    line = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert line["num_samples"] == 50 and 0.0 < line["accuracy"] <= 1.0


def test_method_settings_follow_the_config_class_fields():
    """The example passes a setting to every method whose config has that field, and refuses it for the others."""
    example = load_example()
    parser_args = lambda *argv: example.build_parser().parse_args(list(argv))  # noqa: E731
    cap = example.pruning_config(parser_args("--method", "cap", "--num-grads", "8", "--fisher-block-size", "16"))
    assert (cap.method, cap.num_grads, cap.fisher_block_size, cap.sparsity) == ("cap", 8, 16, 0.7)
    magnitude = example.pruning_config(parser_args("--method", "magnitude", "--sparsity-distribution", "global", "--sparsity", "0.6"))
    assert (magnitude.sparsity_distribution, magnitude.sparsity) == ("global", 0.6)
    assert example.pruning_config(parser_args("--method", "magnitude")).sparsity_distribution == hf_sparsify.MagnitudeConfig().sparsity_distribution
    vbp = example.pruning_config(parser_args("--method", "vbp", "--sparsity", "0.3"))
    assert vbp.target == 0.3  # --sparsity sets the method's target field (VBP: pruning_ratio)
    with pytest.raises(SystemExit, match="--num-grads is not a setting of magnitude"):
        example.pruning_config(parser_args("--method", "magnitude", "--num-grads", "8"))
