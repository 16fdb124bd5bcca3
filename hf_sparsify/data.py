"""Calibration and evaluation data: from a `datasets` Dataset, a DataLoader, or any iterable of batch dicts.

Everything becomes batches of dicts with ``pixel_values`` (float, ``(batch, channels, height, width)``) and, where
the data has them, ``labels`` (long, ``(batch,)``). Subsets are drawn **at random with a seed**, never as the
first rows: image datasets are usually sorted by class.

```python
>>> from hf_sparsify.data import load_image_dataset, CalibrationData
>>> ds = load_image_dataset("../shared/data/cifar10", split="train")
>>> calib = CalibrationData.from_source(ds, model=model, image_processor=processor, num_samples=256, batch_size=32)
>>> next(iter(calib))["pixel_values"].shape
torch.Size([32, 3, 32, 32])
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .errors import HfSparsifyError

__all__ = [
    "CalibrationData",
    "CalibrationWindow",
    "CalibrationDataError",
    "check_dataset_labels",
    "load_image_dataset",
    "find_columns",
    "random_indices",
    "dataset_batches",
    "resolve_image_processor",
]

_IMAGE_COLUMNS = ("image", "img", "pixel_values", "images", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")


_SPLIT_HINT = "choose one (split= in Python, --split or --calibration-split on the command line)."

class CalibrationDataError(HfSparsifyError, ValueError):
    """Calibration or evaluation data is empty, mis-shaped, or lacks what the method needs."""


# --------------------------------------------------------------------------------------------- datasets
def load_image_dataset(source: str | os.PathLike, split: str = "train"):
    """Load an image classification dataset split from a Hub id, a ``save_to_disk`` folder, a parquet file, a
    folder of parquet files named by split (``train.parquet``, ``test.parquet``), or an image folder.

    Returns a ``datasets.Dataset``.
    """
    dataset = _load_image_dataset(source, split)
    if len(dataset) == 0:
        raise CalibrationDataError(f"{source} (split {split!r}) holds no rows: give a dataset with images.")
    return dataset


def _load_image_dataset(source: str | os.PathLike, split: str):
    import datasets

    path = Path(source)
    if path.exists():
        try:
            return _load_local(path, split)
        except ValueError as err:  # datasets' own, e.g. 'Instruction "train" corresponds to no data!' for an empty file
            if isinstance(err, CalibrationDataError):
                raise
            raise CalibrationDataError(f"{path}: could not read a dataset split {split!r} ({' '.join(str(err).split())}).") from None
    if str(source).startswith((".", "/", "~")) or os.sep in str(source) and not _looks_like_repo_id(str(source)):
        raise CalibrationDataError(f"No data at {source}: the path does not exist.")
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise CalibrationDataError(
            f"Could not load dataset {source!r} (split {split!r}) from the Hugging Face Hub: {err}. "
            "Give a local path (a datasets folder, a parquet file or an image folder) when offline."
        ) from err


def _load_local(path: Path, split: str):
    import datasets

    if path.is_file():
        if path.suffix != ".parquet":
            raise CalibrationDataError(f"{path}: a data file must be .parquet; for images give their folder (imagefolder layout).")
        return _load_parquet(path, split)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return _pick_split(loaded, split, str(path))
        parquet = sorted(path.glob("*.parquet"))
        if parquet:
            files = {p.stem.split("-")[0]: str(p) for p in parquet}
            if split not in files:
                raise CalibrationDataError(f"{path} has parquet splits {sorted(files)}, not {split!r}: {_SPLIT_HINT}")
            return _load_parquet(Path(files[split]), split)
        if not any(path.iterdir()):
            raise CalibrationDataError(f"{path} is an empty folder: it holds no images or data files.")
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        return _pick_split(loaded, split, str(path))
    raise CalibrationDataError(f"{path} is neither a file nor a folder.")


def _load_parquet(path: Path, split: str):
    import datasets
    import pyarrow.parquet

    if pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0:
        raise CalibrationDataError(f"{path} holds no rows: give a dataset with images.")
    return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)


def _looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "/"))


def _pick_split(loaded, split: str, where: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise CalibrationDataError(f"{where} has splits {list(loaded)}, not {split!r}: {_SPLIT_HINT}")
        return loaded[split]
    return loaded


def find_columns(dataset) -> tuple[str, str | None]:
    """The image column and the label column (``None`` if absent) of a datasets ``Dataset``.

    The label column is the ``ClassLabel`` column, else an integer column with a usual name (``label``,
    ``labels``, ``fine_label``...); a column of text labels is not one (see :func:`check_dataset_labels`).
    """
    import datasets

    features = dataset.features
    image = next((name for name, f in features.items() if isinstance(f, datasets.Image)), None)
    if image is None:
        image = next((name for name in _IMAGE_COLUMNS if name in features), None)
    if image is None:
        raise CalibrationDataError(
            f"The dataset has no image column (columns: {list(features)}); name it 'image' or cast it to datasets.Image()."
        )
    label = next((name for name, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label is None:
        label = next((name for name in _LABEL_COLUMNS if name in features and _is_integer_feature(features[name])), None)
    return image, label


def _is_integer_feature(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))


def check_dataset_labels(dataset, *, num_labels: int | None, required: bool, what: str = "the data", method: str | None = None) -> None:
    """Refuse labels a classification loss cannot use, before any work: a label column of text, and class
    indices outside ``[0, num_labels)`` (the model's classes).

    Args:
        dataset: a ``datasets.Dataset``.
        num_labels: the model's number of classes (``model.config.num_labels``); ``None`` skips the range check.
        required: the labels will be used (a loss, an evaluation); otherwise only a usable label column is checked.
        what: how to name the data in messages (``"--calibration data/"``).
        method: the method that reads the labels, for messages.

    Raises:
        CalibrationDataError: text labels where labels are required, or class indices out of range.
    """
    import numpy as np

    features = dataset.features
    _, label = find_columns(dataset)
    if label is None:
        text = next((name for name in _LABEL_COLUMNS if name in features), None)
        if text is not None and required:
            examples = ", ".join(repr(v) for v in dataset[:3][text])
            raise CalibrationDataError(
                f"{what}: the label column {text!r} holds {features[text].dtype if hasattr(features[text], 'dtype') else 'non-integer'} "
                f"values ({examples}), not class indices{f' that {method} can use' if method else ''}: encode it, e.g. "
                f"ds = ds.class_encode_column({text!r}), in the order of the model's config.label2id."
            )
        return
    if num_labels is None or not required:
        return
    labels = np.asarray(dataset.with_format("numpy")[label])
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_labels:
        raise CalibrationDataError(
            f"{what}: the labels in column {label!r} go from {low} to {high}, but the model has {num_labels} classes "
            f"(0 to {num_labels - 1}): the data's classes are not the model's (check the dataset and the model's config.id2label)."
        )


def random_indices(length: int, num: int | None, seed: int) -> list[int]:
    """``num`` distinct row indices drawn at random with ``seed`` (all rows, shuffled, if ``num`` is None)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(length)
    if num is not None:
        order = order[: min(num, length)]
    return order.tolist()


def resolve_image_processor(model, image_processor=None):
    """The given image processor, or ``AutoImageProcessor.from_pretrained`` of the model's own name or path."""
    if image_processor is not None:
        return image_processor
    from transformers import AutoImageProcessor

    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not name:
        raise CalibrationDataError(
            "The calibration data holds images, and the model has no name or path to load its image processor from: "
            "pass image_processor=AutoImageProcessor.from_pretrained(<model id or folder>)."
        )
    try:
        return AutoImageProcessor.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        raise CalibrationDataError(
            f"Could not load the image processor of {name!r} ({err}); pass image_processor=... explicitly."
        ) from err


def dataset_batches(dataset, indices: list[int], batch_size: int, image_processor, *, image_column: str, label_column: str | None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of the given rows, images turned into ``pixel_values`` by ``image_processor``.

    Images the processor cannot bring to one size (mixed sizes with ``do_resize=False``) and arrays of mixed
    shapes raise :class:`CalibrationDataError` naming the sizes."""
    for start in range(0, len(indices), batch_size):
        rows = dataset[indices[start : start + batch_size]]
        images = rows[image_column]
        if images and isinstance(images[0], torch.Tensor):
            pixel_values = _stack([torch.as_tensor(x, dtype=torch.float32) for x in images], image_column)
        elif images and isinstance(images[0], (list, np.ndarray)) and image_column == "pixel_values":
            pixel_values = _stack([torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in images], image_column)
        else:
            images = [img.convert("RGB") if hasattr(img, "convert") else img for img in images]
            try:
                pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
            except (ValueError, RuntimeError) as err:
                sizes = sorted({f"{img.size[0]}×{img.size[1]}" for img in images if hasattr(img, "size") and isinstance(img.size, tuple)})
                if len(sizes) > 1:
                    raise CalibrationDataError(
                        f"the images have different sizes ({', '.join(sizes[:4])}{'...' if len(sizes) > 4 else ''}) and the image "
                        f"processor ({type(image_processor).__name__}, do_resize={getattr(image_processor, 'do_resize', '?')}) does "
                        "not bring them to one size: resize them, or use an image processor with do_resize=True."
                    ) from None
                raise CalibrationDataError(f"the image processor could not turn the images into pixel_values: {' '.join(str(err).split())}") from None
        batch = {"pixel_values": pixel_values}
        if label_column is not None:
            batch["labels"] = torch.as_tensor(rows[label_column], dtype=torch.long)
        yield batch


def _stack(tensors: list[torch.Tensor], column: str) -> torch.Tensor:
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise CalibrationDataError(
            f"the {column!r} arrays have different shapes ({', '.join(map(str, shapes[:4]))}): every image must have the same "
            "shape (channels, height, width); resize them to one size."
        )
    return torch.stack(tensors)


def _classifier_num_labels(model) -> int | None:
    """The number of classes of an image classifier (``None`` for a backbone or an unknown model)."""
    if model is None or "ForImageClassification" not in type(model).__name__:
        return None
    return getattr(getattr(model, "config", None), "num_labels", None)


def _check_source_labels(source, *, model, needs_labels: bool, method: str) -> None:
    """The label checks of :func:`check_dataset_labels` for a ``datasets.Dataset`` given as calibration data."""
    import datasets

    if isinstance(source, datasets.Dataset) and len(source) > 0:
        check_dataset_labels(source, num_labels=_classifier_num_labels(model), required=needs_labels, what="calibration_data", method=method)


# --------------------------------------------------------------------------------------------- batches
def _to_batch(item: Any) -> dict[str, torch.Tensor]:
    if isinstance(item, dict) or hasattr(item, "keys"):
        batch = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
        batch = {"pixel_values": item[0], "labels": item[1]}
    elif isinstance(item, torch.Tensor):
        batch = {"pixel_values": item}
    else:
        raise CalibrationDataError(
            f"A calibration batch must be a dict with 'pixel_values' (and 'labels'), an (images, labels) pair or a tensor; "
            f"got {type(item).__name__}."
        )
    if "pixel_values" not in batch:
        raise CalibrationDataError(f"A calibration batch has no 'pixel_values' (keys: {sorted(batch)}); turn images into pixel_values with the image processor.")
    if not isinstance(batch["pixel_values"], torch.Tensor):
        batch["pixel_values"] = torch.as_tensor(np.asarray(batch["pixel_values"]), dtype=torch.float32)
    if "labels" in batch and batch["labels"] is not None and not isinstance(batch["labels"], torch.Tensor):
        try:
            batch["labels"] = torch.as_tensor(batch["labels"], dtype=torch.long)
        except (TypeError, ValueError):
            raise CalibrationDataError(
                f"labels must be class indices (integers), got {batch['labels'][:3]!r}...: map the class names to the "
                "indices of the model's config.label2id."
            ) from None
    if "labels" in batch and batch["labels"] is None:
        del batch["labels"]
    return batch


def _validate(batch: dict[str, torch.Tensor], num_channels: int | None) -> None:
    pv = batch["pixel_values"]
    if pv.dim() == 3:
        raise CalibrationDataError(
            f"pixel_values has shape {tuple(pv.shape)}: expected (batch, channels, height, width). "
            "A single image needs a batch dimension: pixel_values.unsqueeze(0)."
        )
    if pv.dim() != 4:
        raise CalibrationDataError(f"pixel_values has shape {tuple(pv.shape)}: expected 4 dimensions (batch, channels, height, width).")
    if pv.shape[0] == 0:
        raise CalibrationDataError("A calibration batch is empty (batch size 0).")
    if num_channels is not None and pv.shape[1] != num_channels:
        raise CalibrationDataError(
            f"pixel_values has {pv.shape[1]} channels but the model expects {num_channels}: "
            f"shape {tuple(pv.shape)} should be (batch, {num_channels}, height, width) (channels first)."
        )
    if not torch.is_floating_point(pv):
        raise CalibrationDataError(f"pixel_values must be floating point (got {pv.dtype}); use the model's image processor.")
    labels = batch.get("labels")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != pv.shape[0]):
        raise CalibrationDataError(f"labels has shape {tuple(labels.shape)}; expected ({pv.shape[0]},), one class index per image.")


class CalibrationData:
    """Re-iterable calibration batches (dicts with ``pixel_values`` and optionally ``labels``).

    Build it with :meth:`from_source`; the batch size is fixed there. Iterating yields one pass: at most
    ``num_samples`` samples (for a Dataset a seeded random subset). Gradient-based methods read an endless stream
    of batches, pass after pass (a Dataset is re-drawn with a new seed for each pass; another re-iterable source
    is iterated again): :meth:`window` gives batches ``start`` to ``stop − 1`` of that stream, and builds only the
    batches asked for (a Dataset's skipped rows are not read or preprocessed), so that recomputation steps and
    processes each build their own batches once.
    """

    def __init__(
        self,
        factory: Callable[[int], Iterator[dict[str, torch.Tensor]]],
        *,
        num_samples: int | None,
        has_labels: bool | None,
        reiterable: bool = True,
        num_channels: int | None = None,
        source_length: int | None = None,
        batch_size: int | None = None,
        lazy_factory: Callable[[int], Iterator[tuple[int, Callable[[], dict[str, torch.Tensor]]]]] | None = None,
        batches_per_pass: int | None = None,
    ):
        self._factory = factory
        self.num_samples = num_samples
        self.has_labels = has_labels
        self.reiterable = reiterable
        self.num_channels = num_channels
        self.source_length = source_length
        self.batch_size = batch_size
        self._lazy_factory = lazy_factory
        self._per_pass = batches_per_pass
        self._passes = 0
        self._pending = None
        self._cursor: tuple[int, int, Iterator] | None = None  # (pass, next stream index, live pass) to continue

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_source(
        cls,
        source: Any,
        *,
        model=None,
        image_processor=None,
        batch_size: int = 32,
        num_samples: int | None = None,
        seed: int = 0,
        needs_labels: bool = False,
        method: str = "this method",
        missing_labels_message: str | None = None,
    ) -> "CalibrationData":
        """Normalise any supported calibration source. Raises :class:`CalibrationDataError` on empty or
        mis-shaped data and on missing labels when ``needs_labels``."""
        if isinstance(source, CalibrationData):
            data = source
        else:
            _check_source_labels(source, model=model, needs_labels=needs_labels, method=method)
            data = cls._build(source, model=model, image_processor=image_processor, batch_size=batch_size, num_samples=num_samples, seed=seed)
        data._check(needs_labels=needs_labels, method=method, missing_labels_message=missing_labels_message)
        return data

    @classmethod
    def _build(cls, source, *, model, image_processor, batch_size, num_samples, seed) -> "CalibrationData":
        import datasets

        num_channels = getattr(getattr(model, "config", None), "num_channels", None)
        if source is None:
            raise CalibrationDataError("calibration_data is None.")
        if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            raise CalibrationDataError(
                f"calibration_data is a DatasetDict with splits {list(source)}: pick one, e.g. calibration_data=ds['train']."
            )
        if isinstance(source, datasets.Dataset):
            if len(source) == 0:
                raise CalibrationDataError("calibration_data is an empty Dataset (0 rows).")
            image_column, label_column = find_columns(source)
            processor = None
            if not (image_column == "pixel_values"):
                processor = resolve_image_processor(model, image_processor)
            length = len(source)
            n = min(num_samples, length) if num_samples else length

            def lazy_factory(pass_index: int):
                # batch j of pass p holds rows idx[j·bs:(j+1)·bs] of the pass's seeded permutation: a batch that is
                # skipped is never read or preprocessed
                idx = random_indices(length, n, seed + pass_index)
                for position, start in enumerate(range(0, len(idx), batch_size)):
                    rows = idx[start : start + batch_size]
                    yield position, lambda rows=rows: next(dataset_batches(source, rows, batch_size, processor, image_column=image_column, label_column=label_column))

            def factory(pass_index: int):
                return (build() for _, build in lazy_factory(pass_index))

            return cls(
                factory, num_samples=n, has_labels=label_column is not None, num_channels=num_channels, source_length=length,
                batch_size=batch_size, lazy_factory=lazy_factory, batches_per_pass=-(-n // batch_size),
            )  # fmt: skip
        if isinstance(source, dict):
            source = [source]
        if isinstance(source, torch.Tensor):
            source = [{"pixel_values": source}]
        if not isinstance(source, Iterable):
            raise CalibrationDataError(
                f"calibration_data of type {type(source).__name__} is not supported: give a datasets.Dataset, a DataLoader, "
                "or an iterable of dicts with 'pixel_values' (and 'labels')."
            )
        reiterable = iter(source) is not source  # generators and iterators are one-shot

        def factory(pass_index: int):
            seen = 0
            for item in source:
                batch = _to_batch(item)
                if num_samples is not None:
                    left = num_samples - seen
                    if left <= 0:
                        return
                    if batch["pixel_values"].shape[0] > left:
                        batch = {k: v[:left] for k, v in batch.items()}
                seen += batch["pixel_values"].shape[0]
                yield batch

        # has_labels=None: read off the first batch in _check; the batch size: the DataLoader's, else the first batch's
        source_batch_size = getattr(source, "batch_size", None)
        return cls(
            factory, num_samples=num_samples, has_labels=None, reiterable=reiterable, num_channels=num_channels,
            batch_size=source_batch_size if isinstance(source_batch_size, int) else None,
        )  # fmt: skip

    def _check(self, *, needs_labels: bool, method: str, missing_labels_message: str | None = None) -> None:
        if self.has_labels is None:
            # peek at the first batch (a one-shot iterator keeps it for the first pass)
            iterator = self._factory(0)
            first = next(iterator, None)
            if first is None:
                raise CalibrationDataError("calibration_data is empty: it yielded no batch.")
            _validate(first, self.num_channels)
            self.has_labels = "labels" in first
            if not self.reiterable:
                self._pending = (first, iterator)
        if needs_labels and not self.has_labels:
            raise CalibrationDataError(
                missing_labels_message
                or f"{method} needs a loss, so the calibration data must have labels: give a Dataset with a label column, "
                "or batches with a 'labels' tensor."
            )

    # ------------------------------------------------------------------------------------------ iteration
    @property
    def rebatchable(self) -> bool:
        """Whether the batches are cut by this object (a Dataset), so that any batch size can be asked for at
        construction; DataLoaders and lists of batches keep their own batches."""
        return self.source_length is not None

    def source_batch_size(self) -> int | None:
        """Images per batch: the size asked for at construction (Dataset), else the DataLoader's ``batch_size``,
        else the size of the first batch."""
        if self.batch_size is None:
            if self._pending is not None:
                first = self._pending[0]
            elif self.reiterable:
                first = next(iter(self._factory(0)), None)
            else:
                first = None
            if first is not None:
                self.batch_size = int(_to_batch(first)["pixel_values"].shape[0])
        return self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (build() for _, build in self._lazy_pass(0))

    def _lazy_pass(self, pass_index: int) -> Iterator[tuple[int, Callable[[], dict[str, torch.Tensor]]]]:
        """``(position, build)`` for every batch of pass ``pass_index``; ``build()`` makes and validates the batch."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._passes += 1
            first, rest = pending
            yield 0, lambda: first  # validated by _check
            count = 1
            for position, batch in enumerate(rest, 1):
                count = position + 1
                yield position, lambda batch=batch: self._validated(batch)
            self._per_pass = self._per_pass or count
            return
        if not self.reiterable and self._passes > 0:
            raise CalibrationDataError(
                "calibration_data is a one-shot iterator (a generator) and was already consumed; pass a list, a DataLoader or a Dataset."
            )
        self._passes += 1
        if self._lazy_factory is not None:
            items = self._lazy_factory(pass_index)
        else:
            items = ((position, (lambda batch=batch: batch)) for position, batch in enumerate(self._factory(pass_index)))
        count = 0
        for position, build in items:
            count += 1
            yield position, lambda build=build: self._validated(build())
        if count == 0:
            raise CalibrationDataError("calibration_data is empty: it yielded no batch.")
        self._per_pass = self._per_pass or count

    def _validated(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _validate(batch, self.num_channels)
        return batch

    def _pass(self, pass_index: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every batch of pass ``pass_index``, built."""
        return (build() for _, build in self._lazy_pass(pass_index))

    def indexed_batches(self, start: int, stop: int, *, process_index: int = 0, num_processes: int = 1) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """``(index, batch)`` for the batches ``start`` to ``stop − 1`` of the endless stream (pass after pass)
        whose index ``i`` has ``i % num_processes == process_index``; the others are not built.

        Reading on where the previous call stopped continues the same pass (no batch is drawn twice); another
        start re-creates its pass and skips to it (for a Dataset, without reading the skipped rows).
        """
        if start < 0 or stop < start:
            raise ValueError(f"a window of the calibration stream needs 0 ≤ start ≤ stop, got {start}, {stop}")
        cursor, self._cursor = self._cursor, None
        if cursor is not None and cursor[1] == start:
            pass_index, index, live = cursor
        else:
            pass_index = start // self._per_pass if self._per_pass else 0
            index, live = pass_index * (self._per_pass or 0), None
        while index < stop:
            fresh = live is None
            if fresh:
                live = self._lazy_pass(pass_index)
            produced = False
            for _, build in live:
                produced = True
                if index >= start and index % num_processes == process_index:
                    yield index, build()
                index += 1
                if index >= stop:
                    self._cursor = (pass_index, index, live)
                    return
            if fresh and not produced:
                raise CalibrationDataError("calibration_data yielded no batch.")
            pass_index, live = pass_index + 1, None

    def window(self, start: int, stop: int) -> "CalibrationWindow":
        """Batches ``start`` to ``stop − 1`` of the stream, as an iterable with a length that the gradient engine
        shares among processes without building the other processes' batches."""
        return CalibrationWindow(self, start, stop)

    def iter_batches(self, num_batches: int, *, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Exactly ``num_batches`` batches from batch ``start`` of the stream, making further passes over the data
        when one pass is too short (a Dataset is re-drawn with a new seed each pass; a re-iterable source is
        iterated again)."""
        return (batch for _, batch in self.indexed_batches(start, start + num_batches))


class CalibrationWindow:
    """Batches ``start`` to ``stop − 1`` of a :class:`CalibrationData` stream (see :meth:`CalibrationData.window`).

    Iterating builds them all; :meth:`indexed` builds one process's share only.
    """

    def __init__(self, data: CalibrationData, start: int, stop: int):
        self.data, self.start, self.stop = data, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (batch for _, batch in self.indexed())

    def indexed(self, process_index: int = 0, num_processes: int = 1) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """``(index, batch)`` of the window's batches whose index ``i`` has ``i % num_processes == process_index``."""
        return self.data.indexed_batches(self.start, self.stop, process_index=process_index, num_processes=num_processes)
