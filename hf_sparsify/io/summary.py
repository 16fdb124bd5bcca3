"""The saved record of a pruned model: ``sparsity_summary.json``, its writer, reader and validators.

A folder written by ``save_pretrained`` holds ``sparsity_summary.json``: the sparsity report of the model (see
:func:`hf_sparsify.sparsity_report`), the pruning run's facts under ``"pruning"``, and under ``"card"`` what the
model card shows besides: evaluation results (``metrics``), measured speed (``speedups``), recovery fine-tuning
(``training``), card ``metadata`` overrides and the base model's ``license``. ``hf-sparsify card DIR`` rebuilds the
card from it, and the loaders give a reloaded model its ``pruning_metrics``/``pruning_speedups`` back from it.

This module is the one place that names the file, writes it, reads it and checks what goes into it.

```python
>>> from hf_sparsify.io.summary import normalize_metrics
>>> normalize_metrics({"dataset": "CIFAR-10", "before": {"accuracy": 0.72}, "after": {"accuracy": 0.69}})
{'dataset': 'CIFAR-10', 'before': {'accuracy': 0.72}, 'after': {'accuracy': 0.69}}
>>> normalize_metrics({"after": {"accuracy": 72.5}})
Traceback (most recent call last):
...
hf_sparsify.io.summary.CardDataError: pruning_metrics['after']['accuracy'] is 72.5, but accuracy-like metrics are fractions in [0, 1]: give 0.725 (a percentage divided by 100).
```
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub.constants import REPOCARD_NAME
from torch import nn

from ..errors import HfSparsifyError
from ..surgery.shapes import METADATA_KEY

__all__ = [
    "SUMMARY_NAME",
    "METRIC_STAGES",
    "CardDataError",
    "card_section",
    "infer_license",
    "is_fraction_metric",
    "is_hub_id",
    "normalize_metadata",
    "normalize_metrics",
    "normalize_speedups",
    "read_summary",
    "record_card_data",
    "summary_dict",
    "write_summary",
]

SUMMARY_NAME = "sparsity_summary.json"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")
METRIC_STAGES = {"before": "dense, before pruning", "after": "after pruning", "recovered": "after pruning and recovery fine-tuning"}
CARD_DATA_KEYS = ("metrics", "speedups", "metadata", "training")
_METRICS_KEYS = {"dataset", "dataset_id", "split", "config", *METRIC_STAGES}
_METADATA_KEYS = {"license", "license_name", "license_link", "base_model", "datasets", "tags", "language", "library_name", "pipeline_tag", "model_name"}
_SPEEDUP_KEYS = {"device", "dtype", "batch_size", "runtime", "dense_ms", "pruned_ms", "speedup", "notes"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
# accuracy, eval_accuracy, top1_accuracy, acc, top1, top-5...: metrics that are fractions (shown as percentages)
_FRACTION_METRIC = re.compile(r"(accuracy|(^|[_-])acc|(^|[_-])top[-_]?\d+)$")


class CardDataError(HfSparsifyError, ValueError):
    """Card data (``pruning_metrics``, ``pruning_speedups``, card metadata) that cannot be shown as given."""


# --------------------------------------------------------------------------------------------- validation
def is_fraction_metric(name: str) -> bool:
    """Whether a metric is a fraction in [0, 1] shown as a percentage (``accuracy``, ``eval_accuracy``, ``top5``...)."""
    return _FRACTION_METRIC.search(str(name).lower()) is not None


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise CardDataError(f"{where} must be a finite number, got {value!r}")
    return value


def _metric_value(name: str, value: Any, where: str) -> float | int:
    value = _number(value, where)
    if is_fraction_metric(name) and not 0 <= value <= 1:
        hint = f": give {value / 100:g} (a percentage divided by 100)" if 1 < value <= 100 else ""
        raise CardDataError(f"{where} is {value!r}, but accuracy-like metrics are fractions in [0, 1]{hint}.")
    return value


def normalize_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check ``pruning_metrics`` and return a JSON-ready copy.

    Schema: ``{"dataset": "CIFAR-10", "dataset_id": "cifar10", "split": "test", "config": None,
    "before": {"accuracy": 0.72, "loss": 0.8, "num_samples": 2000}, "after": {...}, "recovered": {...}}``:
    every key optional, at least one stage; a stage maps metric names to numbers. Accuracy-like metrics
    (see :func:`is_fraction_metric`) are fractions in [0, 1]: a percentage such as ``72.5`` is refused with a
    message saying to divide it by 100 (it is not converted: ``0.9`` could be either).
    """
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise CardDataError(f"pruning_metrics must be a dict, got {type(metrics).__name__}")
    unknown = set(metrics) - _METRICS_KEYS
    if unknown:
        raise CardDataError(f"pruning_metrics has unknown keys {sorted(unknown)}; allowed: {sorted(_METRICS_KEYS)}")
    out: dict[str, Any] = {}
    for key in ("dataset", "dataset_id", "split", "config"):
        if metrics.get(key) is not None:
            if not isinstance(metrics[key], str):
                raise CardDataError(f"pruning_metrics[{key!r}] must be a string, got {metrics[key]!r}")
            out[key] = metrics[key]
    stages = [s for s in METRIC_STAGES if metrics.get(s)]
    if not stages:
        raise CardDataError(f"pruning_metrics needs at least one of {list(METRIC_STAGES)} with metric values")
    for stage in stages:
        values = metrics[stage]
        if not isinstance(values, Mapping):
            raise CardDataError(f"pruning_metrics[{stage!r}] must map metric names to numbers, got {values!r}")
        out[stage] = {str(k): _metric_value(str(k), v, f"pruning_metrics[{stage!r}][{k!r}]") for k, v in values.items()}
    return out


def normalize_speedups(speedups: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Check ``pruning_speedups``: a list of ``{"device", "dtype", "batch_size"}`` plus either ``dense_ms`` and
    ``pruned_ms`` (latency per batch) or ``speedup``; optional ``runtime`` (``eager``, ``compile``, ``onnxruntime``,
    ``semi-structured``: what ``hf-sparsify benchmark`` timed) and ``notes`` (e.g. the kernel or backend)."""
    if speedups is None:
        return []
    if isinstance(speedups, Mapping):
        speedups = [speedups]
    out = []
    for i, entry in enumerate(speedups):
        if not isinstance(entry, Mapping):
            raise CardDataError(f"pruning_speedups[{i}] must be a dict, got {entry!r}")
        missing = [k for k in ("device", "dtype", "batch_size") if entry.get(k) in (None, "")]
        if missing:
            raise CardDataError(f"pruning_speedups[{i}] needs {missing}: a speed figure without device, dtype and batch size cannot be read")
        unknown = set(entry) - _SPEEDUP_KEYS
        if unknown:
            raise CardDataError(f"pruning_speedups[{i}] has unknown keys {sorted(unknown)}; allowed: {sorted(_SPEEDUP_KEYS)}")
        item = {"device": str(entry["device"]), "dtype": str(entry["dtype"]).replace("torch.", ""), "batch_size": int(_number(entry["batch_size"], f"pruning_speedups[{i}]['batch_size']"))}
        if entry.get("dense_ms") is not None and entry.get("pruned_ms") is not None:
            item["dense_ms"] = float(_number(entry["dense_ms"], f"pruning_speedups[{i}]['dense_ms']"))
            item["pruned_ms"] = float(_number(entry["pruned_ms"], f"pruning_speedups[{i}]['pruned_ms']"))
            if item["pruned_ms"] <= 0:
                raise CardDataError(f"pruning_speedups[{i}]['pruned_ms'] must be positive")
            item["speedup"] = entry.get("speedup") or item["dense_ms"] / item["pruned_ms"]
        elif entry.get("speedup") is not None:
            item["speedup"] = float(_number(entry["speedup"], f"pruning_speedups[{i}]['speedup']"))
        else:
            raise CardDataError(f"pruning_speedups[{i}] needs dense_ms and pruned_ms, or speedup")
        if entry.get("runtime"):
            item["runtime"] = str(entry["runtime"])
        if entry.get("notes"):
            item["notes"] = str(entry["notes"])
        out.append(item)
    return out


def normalize_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Card metadata overrides: ``license``, ``base_model``, ``datasets``, ``tags`` (added), ``language``,
    ``library_name``, ``pipeline_tag``, ``model_name``, ``license_name``/``license_link``."""
    if not metadata:
        return {}
    unknown = set(metadata) - _METADATA_KEYS
    if unknown:
        raise CardDataError(f"card metadata has unknown keys {sorted(unknown)}; allowed: {sorted(_METADATA_KEYS)}")
    out = {k: v for k, v in metadata.items() if v is not None}
    if isinstance(out.get("tags"), str):
        out["tags"] = [out["tags"]]
    if "tags" in out and not all(isinstance(t, str) and t for t in out["tags"]):
        raise CardDataError(f"card metadata 'tags' must be a list of non-empty strings, got {out['tags']!r}")
    return out


# --------------------------------------------------------------------------------------------- licence
def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` looks like a Hub repo id (and is not a local path)."""
    return bool(name) and _HUB_ID.match(str(name)) is not None and not Path(str(name)).exists()


def _card_license(readme: Path) -> str | None:
    """The ``license`` in a README's YAML metadata, or ``None`` (no file, no metadata, unreadable)."""
    from huggingface_hub import metadata_load

    try:
        license_ = (metadata_load(readme) or {}).get("license") if readme.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable card means "unknown"
        return None
    return str(license_) if isinstance(license_, str) and license_ else None


def _license_from_folder(path: Path) -> str | None:
    license_ = _card_license(path / REPOCARD_NAME)
    if license_:
        return license_
    for name in LICENSE_FILES:
        file = path / name
        if file.is_file():
            head = file.read_text(encoding="utf-8", errors="replace")[:400].lower()
            if "mit license" in head or "permission is hereby granted, free of charge" in head:
                return "mit"
            if "apache license" in head and "2.0" in head:
                return "apache-2.0"
    return None


def infer_license(base_model: str | None) -> str | None:
    """The licence of the base model, from its local folder (README metadata or LICENSE) or the local Hub cache
    (never fetched)."""
    if not base_model:
        return None
    path = Path(str(base_model))
    if path.is_dir():
        return _license_from_folder(path)
    if not is_hub_id(base_model):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(base_model), REPOCARD_NAME)
    except Exception:  # noqa: BLE001 - no cache, no licence
        return None
    return _card_license(Path(cached)) if isinstance(cached, str) else None


# --------------------------------------------------------------------------------------------- the record
def summary_dict(model: nn.Module) -> dict[str, Any]:
    """What ``sparsity_summary.json`` holds, without its ``"card"`` part: the sparsity report and the pruning
    run's facts."""
    from ..report import sparsity_report

    summary = sparsity_report(model).to_dict()
    result = getattr(model, "pruning_result", None)
    if result is not None:
        summary["pruning"] = result.to_dict()
    return summary


def card_section(model: nn.Module, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``"card"`` part of ``sparsity_summary.json``: the model's ``pruning_metrics``, ``pruning_speedups``,
    ``pruning_training`` and card ``metadata``, checked, plus the base model's licence when it can be read locally.
    Raises :class:`CardDataError` on bad values, so a save checks them before it writes anything."""
    section: dict[str, Any] = dict(getattr(model, "pruning_card", None) or {})
    metrics = normalize_metrics(getattr(model, "pruning_metrics", None))
    if metrics:
        section["metrics"] = metrics
    speedups = normalize_speedups(getattr(model, "pruning_speedups", None))
    if speedups:
        section["speedups"] = speedups
    training = getattr(model, "pruning_training", None)
    if training:
        section["training"] = dict(training)
    if metadata:
        section["metadata"] = {**(section.get("metadata") or {}), **normalize_metadata(metadata)}
    if not (section.get("metadata") or {}).get("license") and not section.get("license"):
        license_ = infer_license((getattr(model.config, METADATA_KEY, None) or {}).get("base_model"))
        if license_:
            section["license"] = license_
    return section


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CardDataError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise CardDataError(f"{path} does not hold a JSON object.")
    return data


def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``sparsity_summary.json`` of a folder ``save_pretrained`` wrote (``FileNotFoundError`` when absent)."""
    path = Path(directory) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {SUMMARY_NAME}: it was not saved by hf_sparsify. Load it with "
            "hf_sparsify.AutoSparseModelForImageClassification.from_pretrained and save it again, or build the card from the model."
        )
    return _read_json(path)


def write_summary(directory: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as the folder's ``sparsity_summary.json`` (through a temporary file and a rename)."""
    path = Path(directory) / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def record_card_data(directory: str | os.PathLike, **fields) -> None:
    """Store card data (``metrics``, ``speedups``, ``metadata``, ``training``) in a saved folder's
    ``sparsity_summary.json``, so that every later card of the folder shows it. Values are checked first."""
    unknown = set(fields) - set(CARD_DATA_KEYS)
    if unknown:
        raise CardDataError(f"unknown card data {sorted(unknown)}; allowed: {list(CARD_DATA_KEYS)}")
    checks = {"metrics": normalize_metrics, "speedups": normalize_speedups, "metadata": normalize_metadata, "training": dict}
    checked = {k: checks[k](v) for k, v in fields.items() if v is not None}
    summary = read_summary(directory)
    card = dict(summary.get("card") or {})
    card.update(checked)
    summary["card"] = card
    write_summary(directory, summary)
