"""Saving pruned models the Hugging Face way.

A model returned by :func:`hf_sparsify.prune` (or loaded by the hf_sparsify loaders) saves with its own
``model.save_pretrained(dir)``, which writes, besides transformers' safetensors weights and ``config.json``:

* ``pruning_config.json``: the method's configuration (reloads with ``PruningConfig.from_pretrained(dir)``);
* ``sparsity_summary.json``: the per-layer sparsity/width report (see :func:`hf_sparsify.sparsity_report`);
* for structurally pruned models, the shape records in ``config.json`` (see :mod:`hf_sparsify.surgery.shapes`).
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration import PruningConfig
from ..surgery.shapes import METADATA_KEY, is_structured, record_shapes

__all__ = ["SUMMARY_NAME", "save_pretrained", "attach_pruning_state"]

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


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> None:
    """Save a pruned model: weights (safetensors), config (with shape records), ``pruning_config.json`` and
    ``sparsity_summary.json``. Extra keyword arguments go to transformers' ``save_pretrained``.

    ```python
    >>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    >>> pruned.save_pretrained("vit-pruned")          # the same as hf_sparsify.save_pretrained(pruned, "vit-pruned")
    ```
    """
    from ..report import sparsity_report

    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; save_pretrained expects a directory.")
    if is_structured(model.config) or getattr(model, "pruning_structured", False):
        record_shapes(model)
    if kwargs.pop("safe_serialization", True) is False:
        raise ValueError("hf_sparsify saves safetensors only (loading never unpickles): drop safe_serialization=False.")
    if kwargs.get("push_to_hub"):
        raise ValueError("use model.push_to_hub(repo_id) or hf_sparsify.push_to_hub(model, repo_id) to upload a pruned model.")
    _original_save(model)(str(directory), **kwargs)
    is_main = kwargs.get("is_main_process", True)
    if not is_main:
        return
    meta = getattr(model.config, METADATA_KEY, None) or {}
    _write_per_layer_config(directory, meta)
    config: PruningConfig | None = getattr(model, "pruning_config", None)
    if config is not None:
        config.save_pretrained(directory)
    report = sparsity_report(model)
    summary = report.to_dict()
    result = getattr(model, "pruning_result", None)
    if result is not None:
        summary["pruning"] = result.to_dict()
    (directory / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def attach_pruning_state(model: nn.Module, config: PruningConfig | None = None, result=None) -> nn.Module:
    """Remember how ``model`` was pruned and route its ``save_pretrained`` through :func:`save_pretrained`."""
    if config is not None:
        model.pruning_config = config
    if result is not None:
        model.pruning_result = result

    def _save(self, save_directory, **kwargs):
        return save_pretrained(self, save_directory, **kwargs)

    _save.__doc__ = save_pretrained.__doc__
    model.save_pretrained = types.MethodType(_save, model)
    return model
