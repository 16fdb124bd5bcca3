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


def test_evaluate_model_refuses_bad_arguments_and_data(demo_model, demo_processor, demo_evaluation):
    import datasets

    from hf_sparsify.data import CalibrationDataError
    from hf_sparsify.evaluation import EvaluationError

    with pytest.raises(EvaluationError, match="batch_size must be a whole number ≥ 1, got 0"):
        evaluate_model(demo_model, demo_evaluation, image_processor=demo_processor, batch_size=0)
    with pytest.raises(EvaluationError, match="limit must be a whole number ≥ 1"):
        evaluate_model(demo_model, demo_evaluation, image_processor=demo_processor, limit=-5)
    out_of_range = [{"pixel_values": torch.zeros(2, 3, 32, 32), "labels": torch.tensor([0, 10])}]
    with pytest.raises(CalibrationDataError, match="labels go from 0 to 10, but the model has 10 classes"):
        evaluate_model(demo_model, out_of_range)
    wrong_size = [{"pixel_values": torch.zeros(2, 3, 64, 64), "labels": torch.tensor([0, 1])}]
    with pytest.raises(CalibrationDataError, match=r"cannot run on the evaluation images: pixel_values of shape \(2, 3, 64, 64\).*image_size=32"):
        evaluate_model(demo_model, wrong_size)
    text = demo_evaluation.select(range(4)).cast_column("label", datasets.Value("string"))
    with pytest.raises(CalibrationDataError, match="holds string values"):
        evaluate_model(demo_model, text, image_processor=demo_processor)


def test_evaluate_model_in_half_precision(demo_model, demo_processor, demo_evaluation):
    """The images are cast to the model's dtype; the statistics are accumulated in float32."""
    rows = demo_evaluation.select(range(8))
    before = evaluate_model(demo_model, rows, image_processor=demo_processor, device="cpu")
    assert before["num_samples"] == 8 and next(demo_model.parameters()).device.type == "cpu"
    half = evaluate_model(demo_model.to(torch.bfloat16), rows, image_processor=demo_processor)
    demo_model.float()
    assert half["num_samples"] == 8 and abs(half["accuracy"] - before["accuracy"]) <= 0.25
