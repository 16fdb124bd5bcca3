"""VBP through the hf-sparsify command line (subprocess, as a user runs it)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import hf_sparsify
from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR

CALIBRATION = DEMO_DATA_DIR / "calibration.parquet"


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hf_sparsify.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def macs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vbp_cli") / "macs"
    result = run(
        "prune", DEMO_MODEL_DIR, "--method", "vbp", "--target-macs-reduction", "0.35", "--calibration", CALIBRATION,
        "--num-calibration-samples", "128", "--output", out, "--disable-tqdm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["method"] == "vbp" and line.get("sparsity") != 0.0  # a shrunk model reports what was removed, not "sparsity": 0.0
    assert "calibration: 128 images" in result.stderr
    return out


def test_target_macs_reduction_flag(macs_dir):
    config = json.loads((macs_dir / "pruning_config.json").read_text())
    assert config["method"] == "vbp" and config["target_macs_reduction"] == 0.35 and config["pruning_ratio"] is None
    assert config["num_calibration_samples"] == 128
    summary = json.loads((macs_dir / "sparsity_summary.json").read_text())
    assert abs(summary["pruning"]["info"]["macs_reduction"] - 0.35) < 0.01
    assert summary["pruning"]["info"]["num_calibration_samples"] == 128


def test_report_shows_widths(macs_dir):
    table = run("report", macs_dir)
    assert table.returncode == 0, table.stderr
    assert "Structures (kept / dense)" in table.stdout
    rows = [line for line in table.stdout.splitlines() if ".mlp " in line and "mlp_neuron" in line]
    assert len(rows) == 4 and all(line.rstrip().endswith("/ 192") for line in rows)
    data = json.loads(run("report", macs_dir, "--json").stdout)
    mlps = [s for s in data["structures"] if s["kind"] == "mlp_neuron"]
    assert all(s["units"] % 8 == 0 and s["units"] < s["dense_units"] == 192 for s in mlps)
    assert data["macs"]["pruned"] < 0.66 * data["macs"]["dense"]


def test_sparsity_flag_is_the_pruning_ratio_and_the_output_reloads(tmp_path):
    out = tmp_path / "ratio"
    result = run(
        "prune", DEMO_MODEL_DIR, "--method", "vbp", "--sparsity", "0.5", "--calibration", CALIBRATION,
        "--num-calibration-samples", "64", "--output", out, "--disable-tqdm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "pruning_config.json").read_text())
    assert config["pruning_ratio"] == 0.5 and config["target_macs_reduction"] is None
    model = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(out)
    widths = [model.get_submodule(f"vit.layers.{i}.mlp.fc1").out_features for i in range(4)]
    assert sum(widths) == 4 * 192 // 2 and all(w % 8 == 0 for w in widths)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=x).logits).all()


def test_errors_are_one_line(tmp_path):
    both = run("prune", DEMO_MODEL_DIR, "--method", "vbp", "--sparsity", "0.5", "--target-macs-reduction", "0.3", "--calibration", CALIBRATION, "--output", tmp_path / "a")
    assert both.returncode == 2 and "exactly one of pruning_ratio" in both.stderr and "Traceback" not in both.stderr
    unreachable = run("prune", DEMO_MODEL_DIR, "--method", "vbp", "--target-macs-reduction", "0.9", "--calibration", CALIBRATION, "--num-calibration-samples", "16", "--output", tmp_path / "c")
    assert unreachable.returncode == 2 and "cannot be reached" in unreachable.stderr
