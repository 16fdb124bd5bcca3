"""SOSP-H and SOSP-I through the hf-sparsify command line: generated flags, the printed plan, save, report and
one-call reload."""

from __future__ import annotations

import json

import pytest
import torch

import hf_sparsify
from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR
from hf_sparsify.cli import main

CALIBRATION = DEMO_DATA_DIR / "calibration.parquet"


@pytest.mark.parametrize(
    "method,flags",
    [
        ("sosp-h", ["--saliency", "abs_of_sum", "--hessian", "gauss_newton", "--structures", "mlp", "heads"]),
        ("sosp-i", ["--gn-samples", "4", "--budget-unit", "parameters", "--min-heads-per-layer", "2"]),
    ],
)
def test_prune_from_the_command_line(method, flags, tmp_path, capsys):
    output = tmp_path / "out"
    code = main([
        "prune", str(DEMO_MODEL_DIR), "--method", method, "--sparsity", "0.3", "--calibration", str(CALIBRATION),
        "--num-calibration-samples", "32", "--output", str(output), "--disable-tqdm", *flags,
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{method.upper()}: gradient + " in captured.err  # the plan names the curvature it computes
    config = hf_sparsify.PruningConfig.from_pretrained(output)
    assert config.method == method and config.pruning_ratio == 0.3 and config.num_calibration_samples == 32
    summary = json.loads((output / "sparsity_summary.json").read_text())["pruning"]
    key = "params_reduction" if "parameters" in flags else "macs_reduction"
    assert summary["info"][key] == pytest.approx(0.3, abs=0.01)
    if method == "sosp-i":
        assert config.gn_samples == 4 and summary["info"]["gauss_newton_directions"] == 4
        assert all(f["width"] >= 2 for f in summary["layers"].values() if f["kind"] == "attention_head")
    else:
        assert (config.saliency, config.hessian, config.structures) == ("abs_of_sum", "gauss_newton", ["mlp", "heads"])
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(output)
    with torch.no_grad():
        assert torch.isfinite(reloaded(pixel_values=torch.randn(2, 3, 32, 32)).logits).all()
    assert "nonnenmacher2022sosp" in (output / "README.md").read_text(encoding="utf-8")
    assert main(["report", str(output)]) == 0
    assert "Structures (kept / dense)" in capsys.readouterr().out
