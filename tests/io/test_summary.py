"""The saved record (sparsity_summary.json): one module names, writes, reads and checks it; accuracy-like metrics
are fractions (a percentage is refused with the fix); licences are inferred from local files only."""

from __future__ import annotations

import json

import pytest

import hf_sparsify
from hf_sparsify.io.summary import (
    SUMMARY_NAME,
    CardDataError,
    infer_license,
    is_fraction_metric,
    normalize_metadata,
    normalize_metrics,
    read_summary,
    record_card_data,
)
from tests.io.models import unstructured_model


@pytest.mark.parametrize("name", ["accuracy", "eval_accuracy", "top1_accuracy", "acc", "top1", "top-5", "eval_top5"])
def test_accuracy_like_metrics_given_in_percent_are_refused(name):
    with pytest.raises(CardDataError, match=rf"\['after'\]\['{name}'\] is 72.5, but accuracy-like metrics are fractions in \[0, 1\]: give 0.725 \(a percentage divided by 100\)"):
        normalize_metrics({"after": {name: 72.5}})
    assert is_fraction_metric(name)
    assert normalize_metrics({"after": {name: 1.0}, "before": {name: 0}}) == {"before": {name: 0}, "after": {name: 1.0}}
    with pytest.raises(CardDataError, match="fractions"):
        normalize_metrics({"after": {name: -0.1}})


@pytest.mark.parametrize("name", ["loss", "eval_loss", "num_samples", "runtime", "samples_per_second"])
def test_other_metrics_take_any_finite_number(name):
    assert not is_fraction_metric(name)
    assert normalize_metrics({"after": {name: 72.5}}) == {"after": {name: 72.5}}


def test_a_percentage_never_reaches_the_card(tmp_path):
    """An accuracy of 72.5 used to be printed as 7250.00%."""
    pruned = unstructured_model()
    pruned.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="divided by 100"):
        hf_sparsify.build_model_card(pruned, metrics={"after": {"accuracy": 72.5}})
    with pytest.raises(ValueError, match="divided by 100"):
        record_card_data(tmp_path, metrics={"after": {"accuracy": 72.5}})
    assert "card" not in read_summary(tmp_path) or "metrics" not in read_summary(tmp_path)["card"]
    record_card_data(tmp_path, metrics={"after": {"accuracy": 0.725}})
    assert read_summary(tmp_path)["card"]["metrics"] == {"after": {"accuracy": 0.725}}


def test_metadata_tags_are_checked():
    assert normalize_metadata({"tags": "cifar10"}) == {"tags": ["cifar10"]}
    with pytest.raises(CardDataError, match="tags"):
        normalize_metadata({"tags": [3]})
    with pytest.raises(CardDataError, match="unknown keys"):
        normalize_metadata({"licence": "mit"})


def test_summary_is_read_and_written_in_one_place(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {SUMMARY_NAME}"):
        read_summary(tmp_path)
    unstructured_model().save_pretrained(tmp_path)
    summary = read_summary(tmp_path)
    assert summary == json.loads((tmp_path / SUMMARY_NAME).read_text())
    assert summary["pruning"]["method"] == "magnitude" and 0.45 < summary["global"]["sparsity"] < 0.55
    (tmp_path / SUMMARY_NAME).write_text("[1, 2]")
    with pytest.raises(CardDataError, match="JSON object"):
        read_summary(tmp_path)


def test_license_is_inferred_from_a_local_folder(tmp_path, demo_model_dir):
    assert infer_license(str(demo_model_dir)) == "mit"
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# x\n")
    assert infer_license(str(tmp_path)) == "apache-2.0"
    assert infer_license(None) is None and infer_license("/no/such/folder") is None
