import json
from pathlib import Path

import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import get_adapter
from hf_sparsify.report import count_macs
from hf_sparsify.surgery import keep_units, record_shapes
from tests.conftest import make_tiny_model


def test_vit_macs_match_the_analytic_count():
    model = make_tiny_model("vit")  # hidden 32, 2 layers, MLP 64, 16px / patch 4 -> 16 patches + CLS = 17 tokens
    tokens, d, f = 17, 32, 64
    patch = 16 * (3 * 4 * 4 * 32)
    per_layer = tokens * (4 * d * d + 2 * d * f) + 2 * tokens * tokens * d
    head = 1 * d * 5  # the classifier sees the CLS token only
    macs = count_macs(model, [g.producers[0] for g in get_adapter(model).structure_groups(["attention_head"])])
    assert macs["total"] == patch + 2 * per_layer + head


def test_report_counts_zeros_and_effective_macs():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    report = hf_sparsify.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    data = json.loads(report.to_json())
    assert data["global"]["targeted_zeros"] == report.targeted_zeros
    assert data["macs"]["dense"] == data["macs"]["pruned"]
    assert data["macs"]["effective"] < data["macs"]["pruned"]
    assert len(data["layers"]) == 12 and all(0.49 < l["sparsity"] < 0.51 for l in data["layers"])
    text = str(report)
    assert "global sparsity 50.00%" in text and "vit.layers.1.mlp.fc2" in text


def test_report_shows_widths_and_dense_macs_of_a_structured_model():
    model = make_tiny_model("vit")
    dense_macs = hf_sparsify.sparsity_report(model).macs["pruned"]
    for group in get_adapter(model).structure_groups(["mlp_neuron"]):
        keep_units(model, group, torch.arange(16 + 8 * group.block_index))
    record_shapes(model)
    report = hf_sparsify.sparsity_report(model)
    widths = {s["name"]: (s["units"], s["dense_units"]) for s in report.structures if s["kind"] == "mlp_neuron"}
    assert widths == {"vit.layers.0.mlp": (16, 64), "vit.layers.1.mlp": (24, 64)}
    assert report.macs["dense"] == dense_macs and report.macs["pruned"] < dense_macs
    assert "16 / 64" in str(report)


@pytest.mark.parametrize("family", ["convnext", "dinov2_swiglu", "deit_teacher"])
def test_report_runs_for_other_families(family):
    report = hf_sparsify.sparsity_report(make_tiny_model(family))
    assert report.sparsity == 0 and report.macs["pruned"] > 0 and report.macs["dense"] == report.macs["pruned"]


# ------------------------------------------------------------------------------------------------ models without images
def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)).eval()


def test_report_of_a_text_model_pruned_with_targets_says_macs_are_unavailable(tmp_path):
    assert hf_sparsify.__file__.startswith(str(Path(__file__).parents[1]))  # not another checkout's package
    pruned = hf_sparsify.prune(_tiny_bert(), hf_sparsify.MagnitudeConfig(sparsity=0.5, targets=[r"intermediate\.dense$"]))
    report = hf_sparsify.sparsity_report(pruned)
    assert [round(l.sparsity, 3) for l in report.layers if l.name.endswith("intermediate.dense")] == [0.5, 0.5]
    assert report.macs == {"dense": None, "pruned": None, "effective": None}
    assert "BertModel takes 'input_ids'" in report.macs_unavailable
    assert "MACs: unavailable" in str(report) and report.to_dict()["macs_unavailable"] == report.macs_unavailable
    # saving writes the summary, which holds the report: it no longer crashes half-way
    pruned.save_pretrained(tmp_path)
    summary = json.loads((tmp_path / "sparsity_summary.json").read_text())
    assert summary["macs"]["pruned"] is None and "input_ids" in summary["macs_unavailable"]


def test_example_inputs_count_the_macs_of_a_text_model():
    model = _tiny_bert()
    tokens, d, f = 8, 16, 32
    report = hf_sparsify.sparsity_report(model, example_inputs={"input_ids": torch.zeros(1, tokens, dtype=torch.long)})
    # 2 layers x (q, k, v, o, fc1, fc2) + the pooler on the first token; BERT's attention products are not hooked
    assert report.macs["pruned"] == 2 * tokens * (4 * d * d + 2 * d * f) + d * d
    assert report.macs["dense"] is None and report.macs_unavailable is None
