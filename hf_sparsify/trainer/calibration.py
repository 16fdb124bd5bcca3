"""Calibration data for the pruning steps of :class:`~hf_sparsify.SparseTrainer`.

Each pruning step reads fresh rows drawn at random from the training data (or ``calibration_dataset``), through the
Trainer's data collator, the same rows on every process. How many images and how many per batch is asked of the
method's configuration (``config.calibration_images()``, ``config.effective_batch_size``), and whether the batches
need labels too (``config.needs_labels()``): nothing here knows a method by name.

```python
>>> from hf_sparsify.trainer.calibration import PruningCalibration
>>> def collate(rows):
...     pixels = processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"]
...     return {"pixel_values": pixels, "labels": torch.tensor([row["label"] for row in rows])}
>>> source = PruningCalibration(calibration, collate, source="calibration_dataset", seed=0)
>>> config = hf_sparsify.MagnitudeConfig(sparsity=0.5, num_calibration_samples=40, calibration_batch_size=16)
>>> [batch["pixel_values"].shape[0] for batch in source.batches(0, config)]
[16, 16, 8]
```
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers.trainer_utils import has_length

from ..configuration import PruningConfig
from ..data import CalibrationData, CalibrationDataError

__all__ = ["PruningCalibration", "check_calibration_dataset"]


def check_calibration_dataset(dataset, method: str, source: str = "train_dataset") -> None:
    """Refuse a calibration source that a pruning step cannot draw random rows from (none, no length, empty)."""
    if dataset is None:
        raise CalibrationDataError(f"{method} reads calibration data at each pruning step: pass train_dataset= or calibration_dataset=.")
    if isinstance(dataset, torch.utils.data.IterableDataset) or not has_length(dataset):
        raise CalibrationDataError(
            f"{method} draws random calibration samples, which needs a dataset with a length: pass "
            "calibration_dataset= (a map-style dataset in the training data's format)."
        )
    if len(dataset) == 0:
        raise CalibrationDataError(f"the calibration data ({source}) is empty.")


class PruningCalibration:
    """Where a trainer's pruning steps read calibration data, and the batches each step reads.

    Args:
        dataset: a map-style dataset in the training data's format (checked by :func:`check_calibration_dataset`).
        collate_fn: the Trainer's data collator (with unused columns removed).
        source: the argument the data came from (``"train_dataset"`` or ``"calibration_dataset"``), for messages.
        seed: the run's seed; step ``i`` draws its rows with ``seed + 10007 · (i + 1)``.
    """

    def __init__(self, dataset, collate_fn: Callable, *, source: str = "train_dataset", seed: int = 0):
        self.dataset, self.collate_fn, self.source = dataset, collate_fn, source
        self.seed = seed

    def check_labels(self, config: PruningConfig) -> None:
        """When the method needs labels (``config.needs_labels()``), refuse batches without them, before training."""
        if not config.needs_labels():
            return
        batch = dict(self.collate_fn([self.dataset[0]]))
        if "labels" not in batch:
            raise CalibrationDataError(
                f"{config.method} needs a loss at each pruning step, so its calibration batches need 'labels', but the "
                f"batches of {self.source} (after the data collator) have only {sorted(batch)}. Pass a labelled "
                "calibration_dataset=, or use a method that needs no labels (e.g. magnitude)."
            )

    def batches(self, index: int, config: PruningConfig, desc: str = "calibration") -> CalibrationData:
        """Fresh batches for pruning step ``index``: ``config.calibration_images()`` random rows (all rows, in a
        random order, when ``None``) in batches of ``config.effective_batch_size``, the same on every process and on
        every reading (a method that reads the same window twice, as CAP's layer streaming does, gets the same
        batches; further passes, as CAP's recomputations, draw new rows)."""
        return CalibrationData.from_rows(
            self.dataset,
            self.collate_fn,
            batch_size=config.effective_batch_size,
            num_samples=config.calibration_images(),
            seed=self.seed + 10_007 * (index + 1),
        )
