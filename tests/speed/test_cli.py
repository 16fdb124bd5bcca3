"""``hf-sparsify benchmark``, ``export`` and ``card --benchmark``: one JSON line on stdout, the ratio on stderr,
one-line errors with exit status 2; the card's speed section comes from a benchmark run."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

import hf_sparsify
from hf_sparsify.cli import main
from tests.conftest import make_tiny_model, tiny_batches

FAST = ["--min-repeats", "3", "--max-seconds", "1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed_cli")
    dense = make_tiny_model("vit")
    dense.save_pretrained(root / "dense")
    pruned = hf_sparsify.prune(dense, hf_sparsify.VBPConfig(pruning_ratio=0.5, round_to=1, num_calibration_samples=8), tiny_batches(dense))
    pruned.save_pretrained(root / "pruned")
    return root


def _json_line(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_benchmark_prints_one_json_line_and_the_ratio(folders, capsys):
    assert main(["benchmark", str(folders / "pruned"), "--baseline", str(folders / "dense"), "--batch-size", "2", *FAST]) == 0
    captured = capsys.readouterr()
    line = _json_line(captured.out)
    assert line["batch_size"] == 2 and line["runtime"] == "eager" and line["speedup"] > 0 and line["macs_ratio"] > 1
    assert "speed-up" in captured.err and "MACs ratio" in captured.err


def test_benchmark_errors_are_one_line(folders, capsys):
    assert main(["benchmark", str(folders / "pruned"), "--runtime", "semi-structured", "--dtype", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --runtime semi-structured:") or torch.cuda.is_available()
    other = folders / "deit"
    make_tiny_model("deit").save_pretrained(other)
    assert main(["benchmark", str(folders / "pruned"), "--baseline", str(other), *FAST]) == 2
    assert "error: the baseline is a DeiTForImageClassification" in capsys.readouterr().err
    assert main(["benchmark", str(folders / "missing")]) == 2
    assert "not found: give a local folder or a Hub model id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", str(folders / "pruned"), "--runtime", "tensorrt"])


def test_export_writes_the_folder_and_says_so(folders, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(folders / "pruned"), str(tmp_path / "onnx")]) == 0
    line = _json_line(capsys.readouterr().out)
    assert line["verified"] and line["outputs"] == ["logits"] and (tmp_path / "onnx" / "model.onnx").is_file()
    assert main(["export", str(folders / "pruned"), str(tmp_path / "onnx")]) == 2
    assert "exists: pass overwrite=True (--overwrite)" in capsys.readouterr().err


def test_card_benchmark_adds_the_measured_speed_section(folders, tmp_path, capsys):
    import shutil

    folder = tmp_path / "pruned"
    shutil.copytree(folders / "pruned", folder)
    assert "Not measured for this checkpoint" in (folder / "README.md").read_text()
    assert main(["card", str(folder), "--benchmark"]) == 2  # no --baseline, and the folder records no local base model
    assert "pass --baseline DENSE_MODEL" in capsys.readouterr().err
    assert main(["card", str(folder), "--benchmark", "--baseline", str(folders / "dense"), "--batch-size", "2", *FAST]) == 0
    card = ModelCard.load(folder / "README.md").text
    section = card.split("## Speed")[1].split("## ")[0]
    assert "| eager | fp32 | 2 |" in section and "hf-sparsify benchmark" in section and "MACs ratio" in section
    speedups = json.loads((folder / "sparsity_summary.json").read_text())["card"]["speedups"]
    assert len(speedups) == 1 and speedups[0]["runtime"] == "eager" and speedups[0]["batch_size"] == 2
    # a saved benchmark line: another batch adds a row, the same settings replace it
    assert main(["benchmark", str(folder), "--baseline", str(folders / "dense"), "--batch-size", "3", *FAST]) == 0
    (tmp_path / "b.json").write_text(capsys.readouterr().out)
    assert main(["card", str(folder), "--benchmark-json", str(tmp_path / "b.json")]) == 0
    assert main(["card", str(folder), "--benchmark-json", str(tmp_path / "b.json")]) == 0
    speedups = json.loads((folder / "sparsity_summary.json").read_text())["card"]["speedups"]
    assert sorted(s["batch_size"] for s in speedups) == [2, 3]
    # a line without a baseline is refused: the card's speed is a measured ratio, never MACs alone
    assert main(["benchmark", str(folder), *FAST]) == 0
    (tmp_path / "alone.json").write_text(capsys.readouterr().out)
    assert main(["card", str(folder), "--benchmark-json", str(tmp_path / "alone.json")]) == 2
    assert "has no baseline" in capsys.readouterr().err
