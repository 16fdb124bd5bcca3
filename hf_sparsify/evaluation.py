"""Evaluation that works offline: top-1 accuracy and cross-entropy of an image classifier.

``evaluate.load("accuracy")`` fetches its script from the Hub. hf_sparsify ships the metric as a local
``evaluate.Metric`` subclass instead, so the ``evaluate`` interface and Trainer's ``compute_metrics`` keep working
without a network:

```python
>>> from hf_sparsify.evaluation import load_metric, compute_accuracy
>>> metric = load_metric("accuracy")                       # an evaluate.Metric, no Hub access
>>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
{'accuracy': 0.6666666666666666}
>>> import numpy as np
>>> compute_accuracy((np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])))   # what Trainer(compute_metrics=...) calls
{'accuracy': 0.5}
```
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from torch import nn

from .data import CalibrationDataError, _classifier_num_labels, check_dataset_labels, dataset_batches, find_columns, random_indices, resolve_image_processor
from .errors import HfSparsifyError
from .utils import progress

__all__ = ["Accuracy", "EvaluationError", "load_metric", "compute_accuracy", "evaluate_model"]


class EvaluationError(HfSparsifyError, ValueError):
    """An evaluation cannot run as asked (a batch size or limit below 1, a model that gives no logits)."""


class Accuracy(evaluate.Metric):
    """Top-1 accuracy as an ``evaluate.Metric`` that needs no Hub access (same output as the Hub's "accuracy")."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Proportion of correct predictions.",
            citation="",
            inputs_description="predictions: predicted class ids; references: true class ids; normalize (default True).",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        correct = (predictions == references).astype(np.float64)
        if sample_weight is not None:
            correct = correct * np.asarray(sample_weight, dtype=np.float64)
            total = float(np.sum(sample_weight))
        else:
            total = float(len(correct))
        score = float(correct.sum())
        return {"accuracy": score / total if normalize and total else score}


_METRICS = {"accuracy": Accuracy}


def load_metric(name: str = "accuracy", **kwargs) -> evaluate.Metric:
    """An offline ``evaluate.Metric`` by name (``"accuracy"``)."""
    if name not in _METRICS:
        raise ValueError(f"hf_sparsify has no offline metric {name!r}; available: {sorted(_METRICS)}.")
    return _METRICS[name](**kwargs)


def compute_accuracy(eval_pred) -> dict[str, float]:
    """A ``compute_metrics`` for ``transformers.Trainer``: top-1 accuracy of ``(logits, labels)``.

    Tuples of logits (DeiT with a distillation head returns several) use the first entry.
    """
    logits, labels = eval_pred
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    predictions = np.argmax(logits, axis=-1)
    return {"accuracy": float((predictions == labels).mean())}


def _logits(output) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        raise EvaluationError("the model returns no logits: evaluation needs an image classifier (a *ForImageClassification model).")
    return logits


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: Any,
    *,
    image_processor=None,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    disable_tqdm: bool = False,
) -> dict[str, float | int]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``.

    Args:
        data: a ``datasets.Dataset`` (image + label columns) or an iterable of batch dicts with ``pixel_values``
            and ``labels``.
        batch_size: images per forward pass (≥ 1).
        limit: evaluate on ``limit`` rows (≥ 1) drawn at random with ``seed`` (datasets are often sorted by class).
        device: where to evaluate; the model is moved there for the evaluation and back afterwards. Default: the
            model's device.

    Returns:
        ``{"accuracy": float, "loss": float, "num_samples": int}``

    Raises:
        EvaluationError: ``batch_size`` or ``limit`` below 1.
        CalibrationDataError: no label column, text labels, labels outside the model's classes, images the model
            cannot run on, or no data.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise EvaluationError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}.")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise EvaluationError(f"limit must be a whole number ≥ 1 (rows drawn at random) or None for every row, got {limit!r}.")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    move = device != home
    if isinstance(data, datasets.Dataset):
        image_column, label_column = find_columns(data)
        check_dataset_labels(data, num_labels=_classifier_num_labels(model), required=True, what="the evaluation data")
        if label_column is None:
            raise CalibrationDataError(f"the evaluation dataset has no label column (columns: {data.column_names}).")
        processor = None if image_column == "pixel_values" else resolve_image_processor(model, image_processor)
        if limit is not None:
            indices = random_indices(len(data), limit, seed)
        else:
            indices = list(range(len(data)))
        batches = dataset_batches(data, indices, batch_size, processor, image_column=image_column, label_column=label_column)
        total_batches = math.ceil(len(indices) / batch_size)
    else:
        batches, total_batches = data, None
    was_training = model.training
    model.eval()
    if move:
        model.to(device)
    dtype = next(model.parameters()).dtype
    correct, seen, loss_sum = 0, 0, 0.0
    try:
        for batch in progress(batches, desc="evaluating", total=total_batches, disable=disable_tqdm):
            if "labels" not in batch:
                raise CalibrationDataError("evaluation batches need 'labels'.")
            pixel_values = batch["pixel_values"].to(device=device, dtype=dtype)
            labels = batch["labels"].to(device)
            logits = _forward(model, pixel_values).float()
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]):
                raise CalibrationDataError(
                    f"evaluation labels go from {int(labels.min())} to {int(labels.max())}, but the model has {logits.shape[-1]} "
                    f"classes (0 to {logits.shape[-1] - 1}): the data's classes are not the model's."
                )
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            seen += labels.numel()
            if limit is not None and not isinstance(data, datasets.Dataset) and seen >= limit:
                break
    finally:
        model.train(was_training)
        if move:
            model.to(home)
    if seen == 0:
        raise CalibrationDataError("the evaluation data is empty.")
    return {"accuracy": correct / seen, "loss": loss_sum / seen, "num_samples": seen}


def _forward(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The model's logits; an input the model cannot take (images of the wrong size) is a one-line data error."""
    try:
        return _logits(model(pixel_values=pixel_values))
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError) as err:
        if isinstance(err, HfSparsifyError):
            raise
        size = getattr(getattr(model, "config", None), "image_size", None)
        expected = f" (the model's config says image_size={size})" if size else ""
        raise CalibrationDataError(
            f"the model cannot run on the evaluation images: pixel_values of shape {tuple(pixel_values.shape)} "
            f"({pixel_values.dtype}) gave \"{' '.join(str(err).split())}\". Give images of the size the model "
            f"expects{expected}: resize them, or use an image processor with do_resize=True."
        ) from None
