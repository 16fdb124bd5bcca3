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

from typing import Any, Callable, Iterator

import torch
from transformers.trainer_utils import has_length

from ..configuration import PruningConfig
from ..data import CalibrationDataError, random_indices
from ..utils import progress

__all__ = ["CalibrationBatches", "PruningCalibration", "check_calibration_dataset"]


class CalibrationBatches:
    """The calibration batches of one pruning step, with a progress bar.

    Every pass (every ``iter()``) draws a fresh random subset of ``num_samples`` rows (all rows, shuffled, when
    ``None``), seeded by ``seed`` and the pass number, so that every process sees the same batches and a method that
    makes several passes (CAP's gradient recomputations) sees new samples.
    """

    def __init__(self, dataset, *, num_samples: int | None, batch_size: int, collate_fn: Callable, num_workers: int = 0, seed: int = 0, desc: str = "calibration", disable_tqdm: bool = False):
        self.dataset, self.num_samples, self.batch_size = dataset, num_samples, batch_size
        self.collate_fn, self.num_workers, self.seed = collate_fn, num_workers, seed
        self.desc, self.disable_tqdm = desc, disable_tqdm
        self._passes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        indices = random_indices(len(self.dataset), self.num_samples, self.seed + 7919 * self._passes)
        self._passes += 1
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, indices), batch_size=self.batch_size, shuffle=False,
            collate_fn=self.collate_fn, num_workers=self.num_workers,
        )
        yield from progress(loader, desc=self.desc, total=len(loader), disable=self.disable_tqdm, unit="batch")


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
        num_workers: DataLoader workers.
        disable_tqdm: hide the progress bars.
    """

    def __init__(self, dataset, collate_fn: Callable, *, source: str = "train_dataset", seed: int = 0, num_workers: int = 0, disable_tqdm: bool = False):
        self.dataset, self.collate_fn, self.source = dataset, collate_fn, source
        self.seed, self.num_workers, self.disable_tqdm = seed, num_workers, disable_tqdm

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

    def batches(self, index: int, config: PruningConfig, desc: str = "calibration") -> CalibrationBatches:
        """Fresh batches for pruning step ``index``: ``config.calibration_images()`` random rows (all rows, in a
        random order, when ``None``) in batches of ``config.effective_batch_size``, the same on every process."""
        return CalibrationBatches(
            self.dataset,
            num_samples=config.calibration_images(),
            batch_size=config.effective_batch_size,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            seed=self.seed + 10_007 * (index + 1),
            desc=desc,
            disable_tqdm=self.disable_tqdm,
        )
