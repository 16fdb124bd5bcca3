"""Model cards: metadata, body, chart, the metrics/speedups API, templates and the README rule."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard

import hf_sparsify
from hf_sparsify.configuration import citation_of
from hf_sparsify.hub import CARD_NAME, CHART_NAME, GENERATED_MARKER, build_model_card
from hf_sparsify.io.summary import normalize_metrics, normalize_speedups
from tests.hub_server import validate_card
from tests.io.models import structured_model, unstructured_model

METRICS = {
    "dataset": "CIFAR-10",
    "dataset_id": "cifar10",
    "split": "test",
    "before": {"accuracy": 0.72, "loss": 0.81, "num_samples": 2000},
    "after": {"accuracy": 0.69, "loss": 0.95, "num_samples": 2000},
    "recovered": {"accuracy": 0.715},
}
SPEEDUP = {"device": "NVIDIA H100 80GB", "dtype": "bfloat16", "batch_size": 64, "dense_ms": 10.0, "pruned_ms": 8.0, "notes": "2:4 kernels"}


def _metadata(card: ModelCard) -> dict:
    return card.data.to_dict()


def test_unstructured_card_metadata_and_body(tmp_path):
    pruned = unstructured_model()
    pruned.pruning_metrics = METRICS
    pruned.pruning_speedups = [SPEEDUP]
    pruned.save_pretrained(tmp_path)
    text = (tmp_path / CARD_NAME).read_text()
    assert text.startswith("---\n") and GENERATED_MARKER in text
    assert (tmp_path / CHART_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = ModelCard.load(tmp_path / CARD_NAME)
    meta = _metadata(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["tags"][:4] == ["hf-sparsify", "pruned", "sparse", "magnitude"] and "unstructured-sparsity" in meta["tags"]
    assert meta["datasets"] == ["cifar10"]
    assert "license" not in meta and "base_model" not in meta  # a tiny model built in code: nothing known
    results = card.data.eval_results
    by_name = {r.metric_name: r.metric_value for r in results}
    assert by_name["accuracy (dense, before pruning)"] == 0.72
    assert by_name["accuracy (after pruning)"] == 0.69
    assert by_name["accuracy (after pruning and recovery fine-tuning)"] == 0.715
    assert all(r.dataset_type == "cifar10" and r.dataset_split == "test" and r.task_type == "image-classification" for r in results)
    assert not any(r.metric_type == "num_samples" for r in results)
    assert validate_card(text) == []
    body = card.text
    assert "50.0% of the weights" in body and "72.00% dense, 69.00% after pruning, 71.50% after recovery fine-tuning" in body
    assert f'AutoModelForImageClassification.from_pretrained("{tmp_path.name}")' in body and "hf_sparsify" not in body.split("```python")[1].split("```")[0]
    assert "| NVIDIA H100 80GB |  | bfloat16 | 64 | 10.00 ms | 8.00 ms | 1.25× | 2:4 kernels |" in body  # no runtime recorded: empty column
    assert '"sparsity": 0.5' in body  # the full pruning config
    assert "vit.layers.0.mlp.fc1" in body and "![Per-layer sparsity and kept widths](sparsity_chart.png)" in body
    assert "MACs per image, non-zero weights only" in body
    assert citation_of("magnitude").bibtex in body
    summary = json.loads((tmp_path / "sparsity_summary.json").read_text())
    assert summary["card"]["metrics"]["after"]["accuracy"] == 0.69  # `hf-sparsify card DIR` rebuilds from it


def test_structured_card_uses_the_hf_sparsify_loader(tmp_path):
    model = structured_model()
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / CARD_NAME)
    meta = _metadata(card)
    assert meta["library_name"] == "hf_sparsify"
    assert "vbp" in meta["tags"] and "structured-pruning" in meta["tags"]
    assert f'hf_sparsify.AutoSparseModelForImageClassification.from_pretrained("{tmp_path.name}")' in card.text
    assert "### Kept structures" in card.text and "Plain `transformers` cannot load this checkpoint" in card.text
    assert "Variance-Based Pruning" in card.text and "2507.12988" in card.text
    assert "instead of" in card.text  # parameters before/after
    assert validate_card(str(card)) == []


def test_compressed_card_uses_the_hf_sparsify_loader(tmp_path):
    unstructured_model().save_pretrained(tmp_path, compressed=True)
    card = ModelCard.load(tmp_path / CARD_NAME)
    assert _metadata(card)["library_name"] == "hf_sparsify"
    assert "hf_sparsify.AutoSparseModelForImageClassification" in card.text and "compressed sparse format" in card.text


def test_license_and_base_model_come_from_the_base_model(tmp_path, demo_model):
    pruned = hf_sparsify.prune(demo_model, hf_sparsify.MagnitudeConfig(sparsity=0.3))
    pruned.save_pretrained(tmp_path)
    meta = _metadata(ModelCard.load(tmp_path / CARD_NAME))
    assert meta["license"] == "mit"  # the bundled model's LICENSE file
    assert (tmp_path / "LICENSE").read_text().startswith("MIT License")  # the notice travels with the weights
    assert "base_model" not in meta  # a local folder is not a Hub id: named in the text only
    assert "`vit-tiny-cifar10`" in (tmp_path / CARD_NAME).read_text()
    # A Hub id is a base_model; explicit metadata wins over what was inferred.
    pruned.save_pretrained(tmp_path, card_metadata={"base_model": "google/vit-base-patch16-224", "license": "apache-2.0", "tags": ["cifar10-finetuned"]})
    meta = _metadata(ModelCard.load(tmp_path / CARD_NAME))
    assert meta["base_model"] == "google/vit-base-patch16-224" and meta["license"] == "apache-2.0" and "cifar10-finetuned" in meta["tags"]


def test_card_from_model_and_from_folder_agree(tmp_path):
    pruned = unstructured_model()
    pruned.pruning_metrics = METRICS
    pruned.save_pretrained(tmp_path)
    from_model = build_model_card(pruned, repo_id="me/vit-50")
    from_folder = build_model_card(tmp_path, repo_id="me/vit-50")
    assert from_model.data.to_dict() == from_folder.data.to_dict()
    assert 'from_pretrained("me/vit-50")' in from_folder.text


def test_a_readme_written_by_the_user_is_kept(tmp_path):
    pruned = unstructured_model()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / CARD_NAME).write_text("# My own card\n")
    pruned.save_pretrained(tmp_path)
    assert (tmp_path / CARD_NAME).read_text() == "# My own card\n"
    # a generated card is replaced on the next save
    (tmp_path / CARD_NAME).unlink()
    pruned.save_pretrained(tmp_path)
    first = (tmp_path / CARD_NAME).read_text()
    pruned.pruning_metrics = METRICS
    pruned.save_pretrained(tmp_path)
    assert (tmp_path / CARD_NAME).read_text() != first and "69.00%" in (tmp_path / CARD_NAME).read_text()


def test_card_false_writes_no_card(tmp_path):
    unstructured_model().save_pretrained(tmp_path, card=False)
    assert not (tmp_path / CARD_NAME).exists() and not (tmp_path / CHART_NAME).exists()


def test_template_with_a_missing_field_raises_a_clear_error(tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }}\n{{ accuracy_table }}\n")
    pruned = unstructured_model()
    with pytest.raises(hf_sparsify.ModelCardTemplateError, match="accuracy_table.*Available fields: .*card_data"):
        build_model_card(pruned, template=template)
    with pytest.raises(hf_sparsify.ModelCardTemplateError, match="cannot read"):
        build_model_card(pruned, template=tmp_path / "missing.md")
    (tmp_path / "bad.md").write_text("{% for x in %}")
    with pytest.raises(hf_sparsify.ModelCardTemplateError, match="line 1"):
        build_model_card(pruned, template=tmp_path / "bad.md")
    # a save with a bad template fails before anything is written
    with pytest.raises(hf_sparsify.ModelCardTemplateError):
        pruned.save_pretrained(tmp_path / "out", card_template=template)


def test_custom_template(tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} ({{ method_title }})\n\n{{ summary }}\n")
    card = build_model_card(unstructured_model(), repo_id="me/custom", template=template)
    assert card.text.strip().splitlines()[-3] == "# custom (magnitude pruning)"


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"after": {"accuracy": "high"}}, "finite number"),
        ({"after": {"accuracy": float("nan")}}, "finite number"),
        ({"datset": "x", "after": {"accuracy": 0.5}}, "unknown keys \\['datset'\\]"),
        ({"dataset": "x"}, "at least one of"),
        ([0.5], "must be a dict"),
    ],
)
def test_bad_metrics_are_refused_with_a_clear_message(metrics, message):
    with pytest.raises(ValueError, match=message):
        normalize_metrics(metrics)


def test_bad_metrics_fail_a_save_before_writing(tmp_path):
    pruned = unstructured_model()
    pruned.pruning_metrics = {"after": {"accuracy": "high"}}
    with pytest.raises(ValueError, match="finite number"):
        pruned.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_speedups_need_device_dtype_and_batch():
    with pytest.raises(ValueError, match=r"needs \['dtype', 'batch_size'\]"):
        normalize_speedups([{"device": "cpu", "speedup": 1.3}])
    with pytest.raises(ValueError, match="dense_ms and pruned_ms, or speedup"):
        normalize_speedups([{"device": "cpu", "dtype": "float32", "batch_size": 1}])
    assert normalize_speedups({"device": "cpu", "dtype": "torch.float32", "batch_size": 8, "speedup": 1.5}) == [{"device": "cpu", "dtype": "float32", "batch_size": 8, "speedup": 1.5}]


def test_every_method_has_a_citation():
    for method in hf_sparsify.available_methods():
        citation = citation_of(method)
        assert citation is not None, method
        assert citation.bibtex.startswith("@") and "year" in citation.bibtex
    for method, arxiv in [("cap", "2210.09223"), ("vbp", "2507.12988"), ("woodfisher", "2004.14340"), ("fastcap", "2210.09223")]:
        assert arxiv in citation_of(method).bibtex


def test_the_validator_rejects_bad_metadata():
    assert validate_card("---\nlicense: not-a-licence\n---\n") != []
    assert validate_card("---\nmodel-index:\n- name: x\n  results:\n  - task: {type: image-classification}\n    dataset: {type: c, name: C}\n    metrics: [{type: accuracy, value: high}]\n---\n") != []
    assert validate_card("---\nbase_model: /abs/path\n---\n") != []


# --------------------------------------------------------------------------------------------- facts
def test_a_model_pruned_twice_credits_both_methods_in_order(tmp_path):
    from tests.conftest import make_tiny_model, tiny_batches

    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=2, batch=4)
    cap = hf_sparsify.prune(model, hf_sparsify.CAPConfig(**hf_sparsify.CAPConfig.quick_settings), batches)
    both = hf_sparsify.prune(cap, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=64), batches)
    both.save_pretrained(tmp_path)
    text = (tmp_path / CARD_NAME).read_text()
    cap_title, vbp_title = citation_of("cap").title, citation_of("vbp").title
    assert f"Method: **{cap_title}, then {vbp_title}**" in text
    assert f"pruned in 2 steps with {cap_title}, then {vbp_title}" in text
    assert f"1. {cap_title} to sparsity 0.5" in text and f"2. {vbp_title} to pruning ratio 0.3, from 8 calibration images" in text
    assert citation_of("cap").bibtex in text and citation_of("vbp").bibtex in text
    assert text.index(citation_of("cap").bibtex) < text.index(citation_of("vbp").bibtex)
    meta = _metadata(ModelCard.load(tmp_path / CARD_NAME))
    assert "cap" in meta["tags"] and "vbp" in meta["tags"]
    # the number of calibration images actually used (8), not the number asked for (64)
    assert "64 calibration" not in text and "8 calibration images in step 2" in text
    # CAP records the images its gradients read (2 batches of 4)
    assert re.search(r"used 8 calibration images in step 1", text)
    # the folder's card is rebuilt from the same facts
    assert build_model_card(tmp_path, chart=CHART_NAME).text == ModelCard.load(tmp_path / CARD_NAME).text


def test_the_card_states_the_calibration_images_actually_used(tmp_path):
    from tests.conftest import make_tiny_model, tiny_batches

    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, hf_sparsify.VBPConfig(pruning_ratio=0.3, round_to=1, num_calibration_samples=1000), tiny_batches(model, num_batches=3, batch=4))
    pruned.save_pretrained(tmp_path)
    text = (tmp_path / CARD_NAME).read_text()
    assert "The pruning decisions used 12 calibration images" in text and "1000" not in text.split("```json")[0]
    assert "pruning ratio 0.3, from 12 calibration images" not in text  # one step: no step list
