"""The hf-sparsify command line, run as a user runs it: in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hf_sparsify.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pruned"
    result = run("prune", DEMO_MODEL_DIR, "--method", "magnitude", "--sparsity", "0.5", "--output", out, "--disable-tqdm")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["method"] == "magnitude" and abs(line["sparsity"] - 0.5) < 1e-3
    return out


def test_prune_writes_a_complete_checkpoint(pruned_dir):
    names = {p.name for p in pruned_dir.iterdir()}
    assert {"model.safetensors", "config.json", "pruning_config.json", "sparsity_summary.json", "preprocessor_config.json"} <= names
    assert json.loads((pruned_dir / "pruning_config.json").read_text())["sparsity"] == 0.5


def test_evaluate_prints_one_json_line(pruned_dir):
    result = run("evaluate", pruned_dir, "--data", DEMO_DATA_DIR / "evaluation.parquet", "--limit", "200", "--disable-tqdm")
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.strip()]
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["num_samples"] == 200 and 0 < metrics["accuracy"] <= 1 and metrics["loss"] > 0


def test_report_table_and_json(pruned_dir):
    table = run("report", pruned_dir)
    assert table.returncode == 0 and "global sparsity 50.00%" in table.stdout
    data = json.loads(run("report", pruned_dir, "--json").stdout)
    assert abs(data["global"]["sparsity"] - 0.5) < 1e-3


def test_output_folder_with_files_is_refused_unless_overwrite(pruned_dir):
    before = (pruned_dir / "model.safetensors").read_bytes()
    result = run("prune", DEMO_MODEL_DIR, "--method", "magnitude", "--sparsity", "0.3", "--output", pruned_dir)
    assert result.returncode == 2 and "already holds files" in result.stderr and "--overwrite" in result.stderr
    assert (pruned_dir / "model.safetensors").read_bytes() == before
    result = run("prune", DEMO_MODEL_DIR, "--method", "magnitude", "--sparsity", "0.3", "--output", pruned_dir, "--overwrite", "--disable-tqdm")
    assert result.returncode == 0, result.stderr
    assert json.loads((pruned_dir / "pruning_config.json").read_text())["sparsity"] == 0.3
    run("prune", DEMO_MODEL_DIR, "--method", "magnitude", "--sparsity", "0.5", "--output", pruned_dir, "--overwrite", "--disable-tqdm")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magnitude", "--sparsity", "1.5"], "sparsity must be in"),
        (["--method", "magnitude"], "give --sparsity"),
        (["--config", "{bad_json}"], "not valid JSON"),
        (["--config", "{unknown_key}"], "unknown key 'sparsty'"),
        (["--method", "magnitude", "--config", "{other_method}"], "is a 'test-other' configuration|Unknown pruning method"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "unknown.json").write_text(json.dumps({"method": "magnitude", "sparsty": 0.5}))
    (tmp_path / "other.json").write_text(json.dumps({"method": "test-other", "sparsity": 0.5}))
    args = [a.format(bad_json=tmp_path / "bad.json", unknown_key=tmp_path / "unknown.json", other_method=tmp_path / "other.json") for a in args]
    result = run("prune", DEMO_MODEL_DIR, *args, "--output", tmp_path / "out")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and __import__("re").search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_method_and_missing_model(tmp_path):
    result = run("prune", DEMO_MODEL_DIR, "--method", "nope", "--sparsity", "0.5", "--output", tmp_path / "o")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run("report", tmp_path / "missing_model")
    assert result.returncode == 2 and "not found" in result.stderr


def test_unsupported_architecture_message(tmp_path):
    import transformers

    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    model.save_pretrained(tmp_path / "resnet")
    result = run("prune", tmp_path / "resnet", "--method", "magnitude", "--sparsity", "0.5", "--output", tmp_path / "o")
    assert result.returncode == 2 and "Supported model types" in result.stderr and "targets=" in result.stderr


def test_demo_runs_and_can_be_rerun(tmp_path):
    result = run("demo", "--disable-tqdm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hf-sparsify demo: cap" in result.stdout and "top-1 accuracy" in result.stdout  # the default: CAP
    out = tmp_path / "hf_sparsify_demo"
    assert (out / "model.safetensors").exists() and (out / "pruning_config.json").exists()
    assert json.loads((out / "pruning_config.json").read_text())["method"] == "cap"
    again = run("demo", "--method", "magnitude", "--disable-tqdm", cwd=tmp_path)  # replaces its own previous output
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "pruning_config.json").read_text())["method"] == "magnitude"


def test_wrong_method_config_is_refused_in_process(tmp_path, capsys, loss_method):
    from hf_sparsify import MagnitudeConfig
    from hf_sparsify.cli import main

    MagnitudeConfig(sparsity=0.5).save_pretrained(tmp_path / "cfg")
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", "test-loss", "--config", str(tmp_path / "cfg"), "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "is a 'magnitude' configuration but --method is 'test-loss'" in err
    assert not (tmp_path / "o").exists()


def test_a_pruning_failure_is_one_error_line(tmp_path):
    """A method that cannot finish (here: VBP on a model whose activations are NaN) exits 2 with its message."""
    import torch
    import transformers

    model = transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("mlp.fc1.weight"))[0].fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan_model")
    transformers.AutoImageProcessor.from_pretrained(DEMO_MODEL_DIR).save_pretrained(tmp_path / "nan_model")
    result = run(
        "prune", tmp_path / "nan_model", "--method", "vbp", "--sparsity", "0.3", "--calibration", DEMO_DATA_DIR,
        "--calibration-split", "calibration", "--num-calibration-samples", "64", "--output", tmp_path / "o", "--disable-tqdm",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: VBP cannot estimate activation statistics") and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
