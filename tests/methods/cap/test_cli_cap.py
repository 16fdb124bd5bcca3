"""``hf-sparsify prune --method cap|woodfisher|fastcap`` on the bundled tiny ViT and CIFAR-10 sample."""

import json
import os
import subprocess
import sys

import pytest

import hf_sparsify
from hf_sparsify.adapters import get_adapter
from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hf_sparsify.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("method, sparsity", [("cap", 0.6), ("woodfisher", 0.6), ("fastcap", 0.5)])
def test_prune_with_a_config_file(tmp_path, method, sparsity):
    config = tmp_path / "pruning_config.json"
    config.write_text(json.dumps({"method": method, "fisher_block_size": 48, "num_grads": 6, "grad_batch_size": 16}))
    out = tmp_path / "pruned"
    result = run(
        "prune", DEMO_MODEL_DIR, "--method", method, "--sparsity", sparsity, "--config", config,
        "--calibration", DEMO_DATA_DIR / "calibration.parquet", "--output", out, "--disable-tqdm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "calibration: 96 images in batches of 16" in result.stderr  # the plan: 6 gradients of 16 images
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["method"] == method
    saved = json.loads((out / "pruning_config.json").read_text())
    assert saved["method"] == method and saved["sparsity"] == sparsity and saved["num_grads"] == 6
    summary = json.loads((out / "sparsity_summary.json").read_text())
    assert summary["pruning"]["info"]["num_grads"] == 6
    assert {v["fisher_block_size"] for v in summary["pruning"]["layers"].values()} == {48}
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(out)
    layers = get_adapter(reloaded).prunable_layers()
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    assert abs(zeros / sum(layer.numel for layer in layers) - sparsity) < 1e-3


def test_bad_block_size_is_a_one_line_error(tmp_path):
    config = tmp_path / "cap.json"
    config.write_text(json.dumps({"method": "cap", "fisher_block_size": 100000, "num_grads": 1}))
    result = run("prune", DEMO_MODEL_DIR, "--config", config, "--sparsity", "0.5", "--calibration", DEMO_DATA_DIR / "calibration.parquet", "--output", tmp_path / "out", "--disable-tqdm")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: fisher_block_size=100000 is larger than layer vit.layers.0.attention.q_proj")


def test_every_setting_as_a_flag(tmp_path, capsys):
    """The Fisher settings are flags generated from the config: no config file needed (in-process, same entry point)."""
    from hf_sparsify.cli import main

    out = tmp_path / "pruned"
    code = main([
        "prune", str(DEMO_MODEL_DIR), "--method", "woodfisher", "--sparsity", "0.5", "--fisher-block-size", "48", "--num-calibration-samples", "32",
        "--grad-batch-size", "8", "--sparsity-distribution", "uniform", "--calibration", str(DEMO_DATA_DIR / "calibration.parquet"), "--output", str(out), "--disable-tqdm",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    saved = json.loads((out / "pruning_config.json").read_text())
    assert (saved["fisher_block_size"], saved["num_calibration_samples"], saved["grad_batch_size"], saved["sparsity_distribution"]) == (48, 32, 8, "uniform")
    assert "calibration: 32 images in batches of 8" in err
