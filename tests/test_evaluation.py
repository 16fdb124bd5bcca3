import numpy as np
import pytest
import torch

from hf_sparsify.evaluation import compute_accuracy, evaluate_model, load_metric


def test_offline_accuracy_metric_matches_numpy():
    metric = load_metric("accuracy")
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]) == {"accuracy": 0.75}
    metric.add_batch(predictions=[1, 1], references=[1, 0])
    metric.add_batch(predictions=[3], references=[3])
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no offline metric"):
        load_metric("bleu")


def test_compute_metrics_for_trainer():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert compute_accuracy((logits, np.array([1, 0, 0])))["accuracy"] == pytest.approx(2 / 3)
    assert compute_accuracy(((logits, logits), np.array([1, 0, 1])))["accuracy"] == 1.0


def test_evaluate_model_on_the_bundled_sample(demo_model, demo_processor, demo_evaluation):
    metrics = evaluate_model(demo_model, demo_evaluation, image_processor=demo_processor, limit=300, batch_size=100)
    assert metrics["num_samples"] == 300 and 0.55 < metrics["accuracy"] < 0.9 and 0.3 < metrics["loss"] < 1.5
    # the same figure computed by hand on the same random rows
    from hf_sparsify.data import random_indices

    rows = demo_evaluation[random_indices(len(demo_evaluation), 300, 0)]
    pv = demo_processor(images=[i.convert("RGB") for i in rows["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pred = demo_model(pixel_values=pv).logits.argmax(-1)
    assert metrics["accuracy"] == pytest.approx((pred == torch.tensor(rows["label"])).float().mean().item())
