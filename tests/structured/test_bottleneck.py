"""bottleneck_report: the per-group kept fractions of a structured pruning step, from a model in memory, a saved folder,
a reloaded model and a PruningResult; the candidate rule; table, JSON and chart; the model card section; errors."""

import json
import shutil

import pytest
import torch
import transformers

import hf_sparsify
from hf_sparsify import BottleneckReportError, UnsupportedModelError
from hf_sparsify.adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON
from hf_sparsify.structured.bottleneck import BottleneckReport, BottleneckRow, card_bottlenecks
from tests.conftest import make_tiny_model, tiny_batches

QUICK = dict(round_to=1, num_calibration_samples=8)


def _vbp(model, **kwargs):
    return hf_sparsify.prune(model, hf_sparsify.VBPConfig(**{"pruning_ratio": 0.4, **QUICK, **kwargs}), tiny_batches(model))


def _rows(report):
    return [(r.name, r.kind, r.block_index, r.kept, r.dense) for r in report.rows]


@pytest.fixture(scope="module")
def pruned_vit():
    model = make_tiny_model("vit", num_hidden_layers=4)
    return _vbp(model)


def test_report_from_the_model_matches_its_pruning_result(pruned_vit):
    report = hf_sparsify.bottleneck_report(pruned_vit)
    layers = pruned_vit.pruning_result.layers
    assert report.method == "vbp" and report.allocation == "global" and report.source == "pruning result"
    assert _rows(report) == [(name, MLP_NEURON, i, r["width"], r["dense_width"]) for i, (name, r) in enumerate(layers.items())]
    assert [r.block for r in report.rows] == [f"vit.layers.{i}" for i in range(4)]
    widths = [pruned_vit.get_submodule(f"vit.layers.{i}.mlp.fc1").out_features for i in range(4)]
    assert [r.kept for r in report.rows] == widths and len(set(widths)) > 1  # a global ranking: unequal widths


def test_same_report_from_folder_reloaded_model_result_and_dict(pruned_vit, tmp_path):
    expected = _rows(hf_sparsify.bottleneck_report(pruned_vit))
    pruned_vit.save_pretrained(tmp_path)
    from_folder = hf_sparsify.bottleneck_report(tmp_path)
    assert _rows(from_folder) == expected and from_folder.source == "saved summary" and from_folder.allocation == "global"
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    from_reloaded = hf_sparsify.bottleneck_report(reloaded)
    assert _rows(from_reloaded) == expected and from_reloaded.source == "saved summary"
    assert _rows(hf_sparsify.bottleneck_report(pruned_vit.pruning_result)) == expected
    assert _rows(hf_sparsify.bottleneck_report(pruned_vit.pruning_result.to_dict())) == expected
    summary = json.loads((tmp_path / "sparsity_summary.json").read_text())
    assert _rows(hf_sparsify.bottleneck_report(summary)) == expected
    # without the folder, a reloaded model falls back to the dense widths its config recorded
    moved = tmp_path.parent / "moved"
    shutil.copytree(tmp_path, moved)
    orphan = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(moved)
    shutil.rmtree(moved)
    from_meta = hf_sparsify.bottleneck_report(orphan)
    assert _rows(from_meta) == expected and from_meta.source == "config metadata" and from_meta.allocation is None
    assert "the allocation is unknown" in str(from_meta)


def test_candidate_rule():
    rows = [
        BottleneckRow("b.0.mlp", MLP_NEURON, "b.0", 0, 120, 192),  # 62.5%
        BottleneckRow("b.1.mlp", MLP_NEURON, "b.1", 1, 8, 192),  # 4.2%
        BottleneckRow("b.2.mlp", MLP_NEURON, "b.2", 2, 32, 192),  # 16.7%
        BottleneckRow("b.3.mlp", MLP_NEURON, "b.3", 3, 104, 192),  # 54.2%
        BottleneckRow("b.0.attention", ATTENTION_HEAD, "b.0", 0, 4, 4),  # 100%
        BottleneckRow("b.1.attention", ATTENTION_HEAD, "b.1", 1, 2, 4),  # 50%
        BottleneckRow("b.2.attention", ATTENTION_HEAD, "b.2", 2, 3, 4),  # 75%: the median of the heads
    ]
    report = BottleneckReport(rows, method="sosp-h", allocation="global")
    assert report.medians() == {MLP_NEURON: pytest.approx((32 / 192 + 104 / 192) / 2), ATTENTION_HEAD: 0.75}
    # median of the MLPs 35.4%: 62.5% and 54.2% are ≥ 45.4%; heads: 100% ≥ 85%; highest fraction first
    assert [r.name for r in report.candidates()] == ["b.0.attention", "b.0.mlp", "b.3.mlp"]
    assert [r.name for r in report.candidates(margin=0.25)] == ["b.0.attention", "b.0.mlp"]
    assert [r.name for r in report.candidates(k=2)] == ["b.0.attention", "b.2.attention"]
    assert [r.name for r in report.candidates(k=2, kinds=["mlp"])] == ["b.0.mlp", "b.3.mlp"]
    assert report.candidates(k=0) == []
    # equal fractions (a per_layer allocation): nothing stands out; ties keep model order under k
    flat = BottleneckReport([BottleneckRow(f"b.{i}.mlp", MLP_NEURON, f"b.{i}", i, 96, 192) for i in range(3)], allocation="per_layer")
    assert flat.candidates() == [] and [r.name for r in flat.candidates(k=2)] == ["b.0.mlp", "b.1.mlp"]
    assert "no bottlenecks to read off" in str(flat)
    with pytest.raises(BottleneckReportError, match="k must be a whole number"):
        report.candidates(k=-1)


def test_table_json_and_chart(pruned_vit, tmp_path):
    report = hf_sparsify.bottleneck_report(pruned_vit)
    text = str(report)
    assert text.splitlines()[0] == "Bottleneck report: vbp, global allocation (from the pruning result)"
    candidates = [r.name for r in report.candidates()]
    for row in report.rows:
        line = next(l for l in text.splitlines() if l.startswith(row.name + " "))
        assert f"{row.fraction:.1%}" in line and line.endswith("*") == (row.name in candidates)
    assert "* bottleneck candidates: kept fraction ≥ the median of its kind + 10 points" in text
    data = json.loads(report.to_json())
    assert data["candidates"] == candidates and data["rule"]["margin"] == 0.1
    assert [g["kept_fraction"] for g in data["groups"]] == [round(r.fraction, 6) for r in report.rows]
    assert report.save_chart(tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convnext_blocks_are_named_from_the_config(tmp_path):
    model = make_tiny_model("convnext")
    pruned = _vbp(model)
    in_memory = hf_sparsify.bottleneck_report(pruned)
    assert [r.block_index for r in in_memory.rows] == [0, 1, 2] and {r.kind for r in in_memory.rows} == {CONV_CHANNEL}
    pruned.save_pretrained(tmp_path)
    assert _rows(hf_sparsify.bottleneck_report(tmp_path)) == _rows(in_memory)
    # a result alone names the blocks but cannot tell ConvNeXt's global block index (stage and layer indices)
    alone = hf_sparsify.bottleneck_report(pruned.pruning_result)
    assert [r.block for r in alone.rows] == [r.block for r in in_memory.rows] and {r.block_index for r in alone.rows} == {None}


def test_expanded_then_pruned_model_reports_against_the_widened_widths(pruned_vit, tmp_path):
    dense = make_tiny_model("vit", num_hidden_layers=4)
    candidates = hf_sparsify.bottleneck_report(pruned_vit).candidates(k=1)
    wide = hf_sparsify.expand(dense, candidates, 2)
    again = _vbp(wide)
    row = next(r for r in hf_sparsify.bottleneck_report(again).rows if r.name == candidates[0].name)
    assert row.dense == 2 * candidates[0].dense and row.original == candidates[0].dense
    # the metadata fallback applies the widening recorded before the last pruning step
    again.save_pretrained(tmp_path / "saved")
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "saved")
    shutil.rmtree(tmp_path / "saved")
    from_meta = hf_sparsify.bottleneck_report(reloaded)
    assert from_meta.source == "config metadata"
    assert _rows(from_meta) == _rows(hf_sparsify.bottleneck_report(again))


def test_card_shows_the_bottleneck_section_for_a_global_allocation_only(pruned_vit, tmp_path):
    pruned_vit.save_pretrained(tmp_path / "global")
    card = (tmp_path / "global" / "README.md").read_text()
    assert "### Bottlenecks" in card and "The chart's last panel shows these fractions." in card
    for row in hf_sparsify.bottleneck_report(pruned_vit).rows:
        assert f"| `{row.name}` | {row.kind} | {row.kept} | {row.dense} | {row.fraction:.1%} |" in card
    summary = json.loads((tmp_path / "global" / "sparsity_summary.json").read_text())
    assert card_bottlenecks(summary) is not None

    per_layer = _vbp(make_tiny_model("vit", num_hidden_layers=4), allocation="per_layer")
    per_layer.save_pretrained(tmp_path / "per_layer")
    assert "### Bottlenecks" not in (tmp_path / "per_layer" / "README.md").read_text()
    magnitude = hf_sparsify.prune(make_tiny_model("vit"), hf_sparsify.MagnitudeConfig(sparsity=0.5))
    magnitude.save_pretrained(tmp_path / "magnitude")
    assert "### Bottlenecks" not in (tmp_path / "magnitude" / "README.md").read_text()


def test_widened_only_model_card_says_so(tmp_path):
    wide = hf_sparsify.expand(make_tiny_model("vit"), [0], 2)
    wide.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "widened by `hf_sparsify.expand`" in card and "it was not pruned" in card
    assert "Method: **none (widened by hf_sparsify.expand, not pruned)**" in card
    assert "Widened ×2 by `hf_sparsify.expand` before any pruning: `vit.layers.0.mlp` 64 → 128." in card


def test_errors(tmp_path):
    model = make_tiny_model("vit")
    with pytest.raises(BottleneckReportError, match="was not structurally pruned"):
        hf_sparsify.bottleneck_report(model)
    magnitude = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    with pytest.raises(BottleneckReportError, match=r"the pruning result of 'magnitude' records no structure widths: only a structured method"):
        hf_sparsify.bottleneck_report(magnitude)
    with pytest.raises(BottleneckReportError, match="records no structure widths"):
        hf_sparsify.bottleneck_report(magnitude.pruning_result)
    with pytest.raises(BottleneckReportError, match="has no sparsity_summary.json"):
        hf_sparsify.bottleneck_report(tmp_path)
    with pytest.raises(BottleneckReportError, match=r"margin must be in \[0, 1\)"):
        hf_sparsify.bottleneck_report(magnitude, margin=1.5)
    with pytest.raises(TypeError, match="bottleneck_report takes a pruned model, a folder or a PruningResult"):
        hf_sparsify.bottleneck_report(42)
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match=r"BertModel \(model_type='bert'\) has no adapter"):
        hf_sparsify.bottleneck_report(bert)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_report_of_a_low_precision_model(dtype):
    model = make_tiny_model("dinov2_swiglu").to(dtype)
    batches = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in b.items()} for b in tiny_batches(model)]
    pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.4, **QUICK), batches)
    report = hf_sparsify.bottleneck_report(pruned)
    assert [r.kept for r in report.rows] == [pruned.get_submodule(r.name).down_proj.in_features for r in report.rows]


@pytest.mark.slow
def test_expand_then_prune_example_runs_on_the_bundled_sample(tmp_path):
    """examples/expand_then_prune.py end to end with tiny settings on the bundled data (no ../shared needed)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "expand_then_prune.py"
    spec = importlib.util.spec_from_file_location("expand_then_prune", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main([
        "--data", "bundled", "--train-steps", "2", "--finetune-steps", "1", "--eval-samples", "200", "--num-calibration", "64",
        "--batch-size", "32", "--output-dir", str(tmp_path),
    ])
    assert results["method"] == example.default_method() and results["eval_samples"] == 200
    budget = results["pruned"]["after_pruning"]["macs"]
    assert results["widened"] == [r["name"] for r in results["report"]["groups"] if r["name"] in results["report"]["candidates"]]
    for arm in example.ARMS:
        entry = results[arm]
        # every arm ends at the budget of the model pruned directly (within the rounding of widths to multiples of 8)
        assert abs(entry["after_pruning"]["macs"] - budget) < 0.02 * budget and "after_finetuning" in entry
    assert results["bottlenecks ×2"]["widened_macs"] > results["dense"]["macs"]
    assert set(results["bottlenecks ×2"]["kept_new_units"]) == set(results["widened"])
    assert json.loads((tmp_path / "results.json").read_text())["table"] == results["table"]
