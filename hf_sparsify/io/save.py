"""Saving pruned models the Hugging Face way.

A model returned by :func:`hf_sparsify.prune` (or loaded by the hf_sparsify loaders) saves with its own
``model.save_pretrained(dir)``, which writes, besides transformers' safetensors weights and ``config.json``:

* ``pruning_config.json``: the method's configuration (reloads with ``PruningConfig.from_pretrained(dir)``);
* ``sparsity_summary.json``: the per-layer sparsity/width report (see :func:`hf_sparsify.sparsity_report`), and
  under ``"card"`` what the model card shows besides (``pruning_metrics``, ``pruning_speedups``, card metadata);
* for structurally pruned models, the shape records in ``config.json`` (see :mod:`hf_sparsify.surgery.shapes`);
* ``README.md``, a model card (see :mod:`hf_sparsify.hub.card`), and ``sparsity_chart.png``. A README.md that
  hf_sparsify did not generate is never replaced;
* with ``compressed=True``, ``model.compressed.safetensors`` instead of ``model.safetensors`` (see
  :mod:`hf_sparsify.io.compressed`).
"""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration import PruningConfig
from ..surgery.shapes import METADATA_KEY, is_structured, record_shapes

__all__ = ["SUMMARY_NAME", "save_pretrained", "attach_pruning_state", "summary_dict", "card_section"]

SUMMARY_NAME = "sparsity_summary.json"


def _original_save(model: nn.Module):
    return type(model).save_pretrained.__get__(model)


def _write_per_layer_config(directory: Path, meta: dict[str, Any]) -> None:
    """Put the transformers-native ``per_layer_config`` into the saved config.json: plain transformers then
    refuses the checkpoint (AmbiguousGlobalPerLayerAttributeError) instead of re-initialising weights."""
    per_layer = meta.get("per_layer_config")
    if not per_layer:
        return
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["per_layer_config"] = per_layer
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def summary_dict(model: nn.Module) -> dict[str, Any]:
    """What ``sparsity_summary.json`` holds: the sparsity report and the pruning run's facts."""
    from ..report import sparsity_report

    summary = sparsity_report(model).to_dict()
    result = getattr(model, "pruning_result", None)
    if result is not None:
        summary["pruning"] = result.to_dict()
    return summary


def card_section(model: nn.Module, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``"card"`` part of ``sparsity_summary.json``: the model's ``pruning_metrics``,
    ``pruning_speedups``, ``pruning_training`` and card ``metadata``, checked, plus the base model's licence
    when it can be read locally. ``hf-sparsify card DIR`` rebuilds the same card from it."""
    from ..hub.card import infer_license, normalize_metadata, normalize_metrics, normalize_speedups

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


def _remember_base_model(model: nn.Module) -> None:
    """Record the name the model was loaded from (before pruning) as its base model, once."""
    meta = getattr(model.config, METADATA_KEY, None)
    if not isinstance(meta, dict) or not meta or "base_model" in meta:
        return
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name:
        meta["base_model"] = str(name)


def _copy_license(directory: Path, base_model: str | None) -> None:
    """A local base model's LICENSE file travels with the derived model (MIT and Apache ask for the notice)."""
    if not base_model or not Path(base_model).is_dir():
        return
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        source = Path(base_model) / name
        if source.is_file() and not (directory / name).exists():
            shutil.copyfile(source, directory / name)


def _compression_settings(model: nn.Module, compressed: bool | str) -> dict[str, Any] | None:
    from ..configuration import parse_nm
    from .compressed import COMPRESSED_WEIGHTS_NAME, ENCODINGS, FORMAT

    if compressed is False or compressed is None:
        return None
    encoding = "auto" if compressed is True else str(compressed)
    nm = None
    config: PruningConfig | None = getattr(model, "pruning_config", None)
    pattern = getattr(config, "mask_structure", None) if config is not None else None
    if isinstance(pattern, str) and ":" in pattern:
        nm = parse_nm(pattern)
    if ":" in encoding:
        nm, encoding = parse_nm(encoding), "nm"
    elif encoding == "auto" and nm is not None:
        encoding = "nm"
    if encoding not in ENCODINGS:
        raise ValueError(f"compressed must be True, 'bitmask', 'nm' or an 'N:M' pattern such as '2:4', got {compressed!r}")
    if encoding == "nm" and nm is None:
        raise ValueError("compressed='nm' needs an N:M pattern: pass compressed='2:4' (or prune with mask_structure='2:4').")
    settings: dict[str, Any] = {"format": FORMAT, "file": COMPRESSED_WEIGHTS_NAME, "encoding": encoding}
    if nm is not None:
        settings["nm"] = list(nm)
    return settings


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    card: bool = True,
    card_template: str | os.PathLike | None = None,
    card_metadata: dict[str, Any] | None = None,
    compressed: bool | str = False,
    **kwargs,
) -> None:
    """Save a pruned model: weights (safetensors), config (with shape records), ``pruning_config.json``,
    ``sparsity_summary.json``, and a model card (``README.md`` + ``sparsity_chart.png``).

    Args:
        card: write the model card. A ``README.md`` hf_sparsify did not generate is kept (with a warning).
        card_template: a Jinja2 card template instead of ``model_cards/pruned_model_card.md``.
        card_metadata: card metadata overrides, e.g. ``{"license": "apache-2.0", "datasets": ["cifar10"]}``.
        compressed: ``True`` (or ``"bitmask"``, ``"2:4"``...) writes ``model.compressed.safetensors``, the compact
            sparse format, instead of ``model.safetensors``; it loads with
            ``hf_sparsify.AutoSparseModelForImageClassification`` (plain transformers refuses it loudly).
        **kwargs: go to transformers' ``save_pretrained`` (``max_shard_size``, ``is_main_process``...).

    The card shows ``model.pruning_metrics`` and ``model.pruning_speedups`` when set (see
    :func:`hf_sparsify.build_model_card`).

    ```python
    >>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    >>> pruned.pruning_metrics = {"dataset": "CIFAR-10", "before": {"accuracy": 0.72}, "after": {"accuracy": 0.70}}
    >>> pruned.save_pretrained("vit-pruned")                      # the same as hf_sparsify.save_pretrained(pruned, ...)
    >>> pruned.save_pretrained("vit-pruned-small", compressed=True)
    ```
    """
    from .compressed import COMPRESSED_WEIGHTS_NAME, compress_checkpoint

    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; save_pretrained expects a directory.")
    if is_structured(model.config) or getattr(model, "pruning_structured", False):
        record_shapes(model)
    if kwargs.pop("safe_serialization", True) is False:
        raise ValueError("hf_sparsify saves safetensors only (loading never unpickles): drop safe_serialization=False.")
    if kwargs.get("push_to_hub"):
        raise ValueError("use model.push_to_hub(repo_id) or hf_sparsify.push_to_hub(model, repo_id) to upload a pruned model.")
    # Checked before anything is written, so a bad argument leaves the folder as it was.
    compression = _compression_settings(model, compressed)
    _remember_base_model(model)
    section = card_section(model, card_metadata)
    meta = getattr(model.config, METADATA_KEY, None)
    if isinstance(meta, dict):
        meta.pop("compression", None)
        if compression:
            meta["compression"] = compression
    try:
        _original_save(model)(str(directory), **kwargs)
    finally:
        if isinstance(meta, dict):
            meta.pop("compression", None)
    is_main = kwargs.get("is_main_process", True)
    if not is_main:
        return
    meta = getattr(model.config, METADATA_KEY, None) or {}
    _write_per_layer_config(directory, meta)
    if compression:
        nm = tuple(compression["nm"]) if compression.get("nm") else None
        compress_checkpoint(directory, compression["encoding"], nm)
    elif (directory / COMPRESSED_WEIGHTS_NAME).exists():
        (directory / COMPRESSED_WEIGHTS_NAME).unlink()  # a stale compressed file of an earlier save
    config: PruningConfig | None = getattr(model, "pruning_config", None)
    if config is not None:
        config.save_pretrained(directory)
    summary = summary_dict(model)
    if section:
        summary["card"] = section
    (directory / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _copy_license(directory, meta.get("base_model"))
    if card:
        from ..hub.card import write_model_card

        write_model_card(directory, template=card_template)


def attach_pruning_state(model: nn.Module, config: PruningConfig | None = None, result=None) -> nn.Module:
    """Remember how ``model`` was pruned and route its ``save_pretrained`` and ``push_to_hub`` through
    :func:`save_pretrained` and :func:`hf_sparsify.push_to_hub`."""
    if config is not None:
        model.pruning_config = config
    if result is not None:
        model.pruning_result = result

    def _save(self, save_directory, **kwargs):
        return save_pretrained(self, save_directory, **kwargs)

    def _push(self, repo_id, **kwargs):
        from ..hub.push import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    _save.__doc__ = save_pretrained.__doc__
    from ..hub.push import push_to_hub as _push_impl

    _push.__doc__ = _push_impl.__doc__
    model.save_pretrained = types.MethodType(_save, model)
    model.push_to_hub = types.MethodType(_push, model)
    return model
