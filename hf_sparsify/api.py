"""``hf_sparsify.prune``: the one verb."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from . import __version__
from .adapters import get_adapter
from .configuration import PruningConfig, get_method
from .data import CalibrationData, CalibrationDataError
from .pruned import attach_pruning_state
from .surgery.shapes import get_metadata, record_shapes
from .utils import get_logger

__all__ = ["prune"]

logger = get_logger(__name__)


def _record_dense_reference(model: nn.Module, adapter) -> None:
    """Before the first pruning, remember the dense model's MACs, parameters and widths (for reports/cards)."""
    from .structured import attention_query_modules, count_macs
    from .surgery.shapes import dense_skeleton

    meta = get_metadata(model.config)
    if "dense_params" in meta:
        return
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name:
        meta.setdefault("base_model", str(name))
    meta["dense_params"] = sum(p.numel() for p in model.parameters())
    try:
        skeleton = dense_skeleton(model)
        meta["dense_macs"] = count_macs(skeleton, attention_query_modules(adapter))["total"]
    except Exception as err:  # noqa: BLE001 - MACs are informative, never a reason to fail pruning
        logger.info(f"hf_sparsify: could not count the dense model's MACs ({err}).")
    if adapter.family != "generic":
        meta["dense_widths"] = {g.name: g.num_units for g in adapter.structure_groups()}


def _record_step(meta: dict[str, Any], config: PruningConfig, result, previous: PruningConfig | None) -> None:
    """Append this pruning step to the model's history (``meta["history"]``, saved in config.json): the method, its
    configuration and the calibration images it actually read (``result.info["num_calibration_samples"]``). A model
    pruned by an hf_sparsify without history starts it with the step its metadata recorded."""
    history = meta.get("history")
    if not isinstance(history, list):
        history = []
        if meta.get("method"):
            earlier: dict[str, Any] = {"method": meta["method"]}
            if previous is not None and previous.method == meta["method"]:
                earlier["config"] = previous.to_dict()
            history.append(earlier)
        meta["history"] = history
    step: dict[str, Any] = {"method": config.method, "config": config.to_dict()}
    used = (getattr(result, "info", None) or {}).get("num_calibration_samples")
    if used is not None:
        step["num_calibration_samples"] = int(used)
    history.append(step)


def prune(
    model: nn.Module,
    config: PruningConfig | dict[str, Any] | str | os.PathLike,
    calibration_data: Any = None,
    *,
    image_processor=None,
    inplace: bool = False,
    device: str | torch.device | None = None,
    disable_tqdm: bool = False,
) -> nn.Module:
    """Prune a transformers vision model with the method its configuration names.

    Args:
        model: a ViT, DeiT, DINOv2 or ConvNeXt(V2) model from transformers (classification head or bare
            backbone); other architectures with ``targets=`` regexes in the config.
        config: a :class:`PruningConfig` (``MagnitudeConfig``, ``CAPConfig``, ``VBPConfig``...), or a dict / a
            ``pruning_config.json`` path / a folder holding one.
        calibration_data: what data-driven methods read: a ``datasets.Dataset`` with an image and a label column
            (images go through ``image_processor``), a ``torch.utils.data.DataLoader``, or any iterable of batch
            dicts with ``pixel_values`` (and ``labels`` when the method needs a loss).
        image_processor: turns dataset images into ``pixel_values``; default:
            ``AutoImageProcessor.from_pretrained`` of the model's own name or path.
        inplace: prune ``model`` itself. By default a deep copy is pruned and ``model`` is left untouched.
        device: where to run (``"cuda"``, ``"cpu"``...); the returned model stays there. Default: the model's device.
        disable_tqdm: hide progress bars.

    Returns:
        The pruned model. ``model.save_pretrained(dir)`` writes the weights, the config,
        ``pruning_config.json``, ``sparsity_summary.json`` and the model card. Each call appends a step (method,
        configuration, calibration images actually used) to ``model.config.hf_sparsify["history"]``, so that a
        model pruned twice (e.g. CAP, then VBP) credits both methods, in order, in its card.

    Example:

    ```python
    >>> import hf_sparsify
    >>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))   # e.g. a transformers ViT
    >>> round(hf_sparsify.sparsity_report(pruned).sparsity, 2)
    0.5
    >>> twice = hf_sparsify.prune(pruned, hf_sparsify.MagnitudeConfig(sparsity=0.7))
    >>> [(step["method"], step["config"]["sparsity"]) for step in twice.config.hf_sparsify["history"]]
    [('magnitude', 0.5), ('magnitude', 0.7)]
    ```
    """
    if not isinstance(config, PruningConfig):
        config = PruningConfig.from_pretrained(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (a transformers model), got {type(model).__name__}.")
    entry = get_method(config.method)
    pruner = entry.pruner_class(config)

    # Fail fast on an unsupported architecture, before copying the model.
    get_adapter(model, allow_generic=config.targets is not None)

    calibration = None
    if pruner.needs_calibration_data:
        if calibration_data is None:
            raise CalibrationDataError(
                f"{config.method} reads calibration data: pass calibration_data= (a datasets.Dataset with images and labels, "
                "a DataLoader, or a list of batch dicts with 'pixel_values' and 'labels')."
            )
        calibration = CalibrationData.from_source(
            calibration_data,
            model=model,
            image_processor=image_processor,
            batch_size=config.effective_batch_size,
            num_samples=config.calibration_images(),
            seed=config.seed,
            needs_labels=config.needs_labels(),
            missing_labels_message=config.missing_labels_message(),
            method=config.method,
        )
    elif calibration_data is not None:
        logger.info(f"hf_sparsify: {config.method} does not read calibration data; it is ignored.")

    if not inplace:
        model = copy.deepcopy(model)
    if device is not None:
        model.to(device)
    run_device = torch.device(device) if device is not None else next(model.parameters()).device
    adapter = get_adapter(model, allow_generic=config.targets is not None)
    _record_dense_reference(model, adapter)

    was_training = model.training
    model.eval()
    try:
        result = pruner.prune(model, adapter, calibration, device=run_device, disable_tqdm=disable_tqdm)
    finally:
        model.train(was_training)

    meta = get_metadata(model.config)
    _record_step(meta, config, result, previous=getattr(model, "pruning_config", None))
    meta["method"] = config.method
    meta["version"] = __version__
    if pruner.changes_shapes:
        model.pruning_structured = True
        record_shapes(model)
    attach_pruning_state(model, config, result)
    return model
