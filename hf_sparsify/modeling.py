"""One-call loaders for pruned checkpoints, structured ones included.

```python
>>> from hf_sparsify import AutoSparseModelForImageClassification
>>> hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5)).save_pretrained(tmp_dir)
>>> reloaded = AutoSparseModelForImageClassification.from_pretrained(tmp_dir)   # a folder or a Hub repo id
>>> reloaded.pruning_config.method
'magnitude'
```

Unstructured checkpoints have the dense shapes and also load with plain ``AutoModelForImageClassification``.
Structurally pruned checkpoints (per-layer MLP widths, heads, channels) record their shapes in ``config.json``;
the loader builds the model of the config, gives it the recorded shapes (see
:mod:`hf_sparsify.surgery.shapes`), and lets transformers load the safetensors weights into it, strictly: a
missing, unexpected or mis-shaped tensor is an error, never a silent re-initialisation.

Compressed checkpoints (``save_pretrained(dir, compressed=True)``, see :mod:`hf_sparsify.io.compressed`) are
decoded and loaded the same way, strictly. Loading reads safetensors only (nothing is unpickled) and never needs
``trust_remote_code``; a truncated or damaged weights file raises :class:`SparseCheckpointError`. Dense
checkpoints load strictly too. Loading another class than the saved architecture (the backbone of a classifier
checkpoint with :class:`AutoSparseModel`) tolerates only the tensors one of the two architectures lacks.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .adapters.base import UnsupportedModelError
from .configuration import CONFIG_NAME, PruningConfig
from .io.compressed import read_compressed_checkpoint
from .io.load import HUB_KWARGS, SparseCheckpointError, from_pretrained_strict, optional_file
from .io.summary import SUMMARY_NAME
from .pruned import attach_pruning_state
from .surgery.shapes import METADATA_KEY, apply_shapes, dense_config, is_structured

__all__ = ["AutoSparseModel", "AutoSparseModelForImageClassification", "SparseCheckpointError"]


def _load_pruning_config(path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> PruningConfig | None:
    file = optional_file(path, CONFIG_NAME, hub_kwargs)
    return PruningConfig.from_pretrained(file) if file else None


def _restore_card_state(model, path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> None:
    """Give a reloaded model the evaluation results and card metadata its summary recorded, so that saving it
    again keeps them in the card."""
    file = optional_file(path, SUMMARY_NAME, hub_kwargs)
    if not file:
        return
    try:
        with open(file, encoding="utf-8") as handle:
            card = dict(json.load(handle).get("card") or {})
    except (OSError, ValueError, AttributeError):
        return
    for key, attribute in (("metrics", "pruning_metrics"), ("speedups", "pruning_speedups"), ("training", "pruning_training")):
        if card.get(key):
            setattr(model, attribute, card.pop(key))
    if card:
        model.pruning_card = card


def _shape_record_for(model, meta: dict[str, Any]) -> dict[str, Any]:
    """The shape record named as ``model`` names its modules: a backbone built from a classifier checkpoint's record
    drops the base-model prefix (``vit.``) and the head's entries; a classifier on a backbone's record adds it."""
    prefix = getattr(model, "base_model_prefix", "")
    keys = ("module_shapes", "parameter_shapes", "module_attributes")
    names = [name for key in keys for name in (meta.get(key) or {})]
    if not prefix or not names:
        return meta
    has_base = isinstance(getattr(model, prefix, None), torch.nn.Module)
    recorded_with_prefix = any(name.startswith(prefix + ".") for name in names)
    if has_base == recorded_with_prefix:
        return meta
    out = dict(meta)
    for key in keys:
        entries = meta.get(key) or {}
        if has_base:
            out[key] = {f"{prefix}.{name}": value for name, value in entries.items()}
        else:
            out[key] = {name[len(prefix) + 1:]: value for name, value in entries.items() if name.startswith(prefix + ".")}
    return out


#: bytes of alignment the CPU kernels expect of a tensor's data (what torch's allocator gives)
_ALIGNMENT = 64


def _realign(model) -> None:
    """Copy the CPU tensors that loading left at unaligned addresses (zero-copy views into the safetensors file,
    whose tensors are 8-byte aligned) into memory of their own. CPU kernels choose their code path by alignment (the
    1×1 convolutions of timm's ConvNeXt do), so without this a reloaded model can differ from the saved one in the
    last bit; with it, it computes exactly as the model that was saved."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % _ALIGNMENT:
                tensor.data = tensor.data.clone()


class _AutoSparseBase:
    _auto_class: Any = None
    _task: str = ""

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is a loader: use {type(self).__name__}.from_pretrained(path_or_repo_id).")

    @classmethod
    def _model_class(cls, config):
        mapping = cls._auto_class._model_mapping
        if type(config) not in mapping:
            other = "AutoSparseModel" if cls is not AutoSparseModel else "AutoSparseModelForImageClassification"
            raise UnsupportedModelError(
                f"transformers has no {cls._task} class for {type(config).__name__} (model_type={config.model_type!r}"
                f"{', a backbone' if cls is not AutoSparseModel else ''}): load this checkpoint with {other}.from_pretrained(...)."
            )
        candidates = mapping[type(config)]
        if not isinstance(candidates, (list, tuple)):
            candidates = (candidates,)
        # Honour the saved architecture when it is one the auto class may build (DeiT's WithTeacher head).
        for arch in getattr(config, "architectures", None) or []:
            klass = getattr(transformers, arch, None)
            if klass is not None and any(klass is c for c in candidates):
                return klass
        return candidates[0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """Load a dense, unstructured-sparse or structurally pruned checkpoint from a folder or a Hub repo id.

        Keyword arguments go to transformers' ``from_pretrained`` (``torch_dtype``/``dtype``, ``device_map``,
        ``revision``, ``token``...). ``ignore_mismatched_sizes`` is refused: shapes come from the checkpoint.
        """
        if kwargs.get("ignore_mismatched_sizes"):
            raise SparseCheckpointError("ignore_mismatched_sizes=True would re-initialise pruned weights; hf_sparsify loads recorded shapes exactly.")
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = kwargs.pop("config", None)
        if config is None:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        meta = dict(getattr(config, METADATA_KEY, None) or {})
        model_class = cls._model_class(config)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = cls._load(model_class, config, meta, pretrained_model_name_or_path, model_args, kwargs, hub_kwargs)
        _realign(model)
        if meta:
            attach_pruning_state(model, config=_load_pruning_config(pretrained_model_name_or_path, hub_kwargs))
            model.pruning_structured = bool(meta.get("structured"))
            _restore_card_state(model, pretrained_model_name_or_path, hub_kwargs)
        return (model, info) if want_info else model

    @classmethod
    def _load(cls, model_class, config, meta, source, model_args, kwargs, hub_kwargs):
        """Load strictly (:func:`hf_sparsify.io.load.from_pretrained_strict`): a missing, unexpected or mis-shaped
        tensor raises :class:`SparseCheckpointError`, for dense, unstructured, structured and compressed checkpoints."""
        compression = meta.get("compression")
        if compression:
            # Decode the compact file into the state dict transformers wrote, then load it as transformers would.
            state_dict = read_compressed_checkpoint(source, compression, hub_kwargs)
            load_kwargs = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS}
            config = copy.deepcopy(config)
            config._name_or_path = str(source)
            getattr(config, METADATA_KEY).pop("compression", None)
            target, extra = None, {"state_dict": state_dict}
        else:
            target, extra, load_kwargs = source, {}, kwargs
        if is_structured(config):
            base_config = dense_config(config)
            setattr(base_config, METADATA_KEY, dict(getattr(config, METADATA_KEY)))

            def __init__(self, cfg, *args, **kw):
                model_class.__init__(self, cfg, *args, **kw)
                apply_shapes(self, _shape_record_for(self, meta))

            shaped = type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})
            model, info = from_pretrained_strict(shaped, target, *model_args, config=base_config, output_loading_info=True, **extra, **load_kwargs)
            model.__class__ = model_class
        else:
            model, info = from_pretrained_strict(model_class, target, *model_args, config=config, output_loading_info=True, **extra, **load_kwargs)
        return model, info


class AutoSparseModelForImageClassification(_AutoSparseBase):
    """Loads any image classifier hf_sparsify pruned (ViT, DeiT, DINOv2, ConvNeXt, timm's through
    ``TimmWrapperForImageClassification``...), in one call."""

    _auto_class = AutoModelForImageClassification
    _task = "image-classification"


class AutoSparseModel(_AutoSparseBase):
    """Loads the bare backbone (``ViTModel``, ``Dinov2Model``, ``DINOv3ViTModel``, ``DINOv3ConvNextModel``,
    ``TimmWrapperModel``...) of a pruned checkpoint, in one call."""

    _auto_class = AutoModel
    _task = "backbone"
