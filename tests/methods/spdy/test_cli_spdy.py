"""SPDY through the hf-sparsify command line (subprocess, as a user runs it): prune, report, card."""

import json
import os
import subprocess
import sys

from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR

CALIBRATION = DEMO_DATA_DIR / "calibration.parquet"


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hf_sparsify.cli", *map(str, args)], check=False, capture_output=True, text=True, env=env, timeout=300)


def test_prune_report_and_card(tmp_path):
    out = tmp_path / "spdy"
    result = run(
        "prune", DEMO_MODEL_DIR, "--method", "spdy", "--target-speedup", "1.3", "--cost", "macs", "--base-method", "vbp",
        "--num-levels", "6", "--num-random-starts", "3", "--search-steps", "5", "--patience", "3",
        "--calibration", CALIBRATION, "--num-calibration-samples", "32", "--database", tmp_path / "db", "--output", out, "--disable-tqdm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["method"] == "spdy" and line["predicted_speedup"] >= 1.3 and line["measured_speedup"] >= 1.3
    assert (tmp_path / "db" / "spdy_database.json").is_file()
    summary = json.loads((out / "sparsity_summary.json").read_text())
    assert summary["pruning"]["info"]["spdy"]["profile"]
    report = run("report", out)
    assert report.returncode == 0 and "Structures (kept / dense)" in report.stdout
    card = (out / "README.md").read_text()
    assert "Speed-up allocation (SPDY)" in card and "Predicted speed-up" in card
    # the reference's unreachable target: a clear one-line error naming the largest speed-up
    bad = run(
        "prune", DEMO_MODEL_DIR, "--method", "spdy", "--target-speedup", "9", "--cost", "macs", "--num-levels", "4",
        "--num-random-starts", "1", "--search-steps", "0", "--calibration", CALIBRATION, "--num-calibration-samples", "8",
        "--database", tmp_path / "db", "--output", tmp_path / "bad", "--disable-tqdm",
    )  # fmt: skip
    assert bad.returncode != 0 and "cannot be reached" in bad.stderr and "at most" in bad.stderr


def test_sparsity_levels_from_magnitude_on_the_command_line(tmp_path):
    out = tmp_path / "levels"
    result = run(
        "prune", DEMO_MODEL_DIR, "--method", "spdy", "--base-method", "magnitude", "--cost", "macs", "--target-speedup", "1.8",
        "--num-levels", "10", "--num-random-starts", "3", "--search-steps", "5", "--patience", "3",
        "--calibration", CALIBRATION, "--num-calibration-samples", "32", "--database", tmp_path / "db", "--output", out, "--disable-tqdm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["predicted_speedup"] >= 1.8 and line["measured_speedup"] >= 1.8 and line["sparsity"] > 0.3
    assert (tmp_path / "db" / "spdy_level_database.json").is_file()
    card = (out / "README.md").read_text()
    assert "### Speed-up allocation (SPDY)\n\nSPDY chose the sparsity level (unstructured) of every layer" in card
    # latency cannot rank unstructured levels: refused before any work, naming the fix
    bad = run("prune", DEMO_MODEL_DIR, "--method", "spdy", "--base-method", "cap", "--calibration", CALIBRATION, "--output", tmp_path / "bad")
    assert bad.returncode != 0 and "cost='macs'" in bad.stderr
