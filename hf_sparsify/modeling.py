"""One-call loaders for pruned checkpoints, structured ones included.

```python
>>> from hf_sparsify import AutoSparseModelForImageClassification
>>> model = AutoSparseModelForImageClassification.from_pretrained("vit-vbp-35")   # a folder or a Hub repo id
```

Unstructured checkpoints have the dense shapes and also load with plain ``AutoModelForImageClassification``.
Structurally pruned checkpoints (per-layer MLP widths, heads, channels) record their shapes in ``config.json``;
the loader builds the model of the config, gives it the recorded shapes (see
:mod:`hf_sparsify.surgery.shapes`), and lets transformers load the safetensors weights into it, strictly: a
missing, unexpected or mis-shaped tensor is an error, never a silent re-initialisation.
"""

from __future__ import annotations

import os
from typing import Any

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .io.save import attach_pruning_state
from .surgery.shapes import METADATA_KEY, apply_shapes, dense_config, is_structured

__all__ = ["AutoSparseModel", "AutoSparseModelForImageClassification", "SparseCheckpointError"]

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class SparseCheckpointError(RuntimeError):
    """A pruned checkpoint does not match its recorded shapes (missing, unexpected or mis-shaped tensors)."""


def _load_pruning_config(path: str | os.PathLike, hub_kwargs: dict[str, Any]):
    from .configuration import CONFIG_NAME, PruningConfig

    local = os.path.join(str(path), CONFIG_NAME)
    if os.path.isfile(local):
        return PruningConfig.from_pretrained(local)
    if os.path.isdir(str(path)):
        return None
    try:
        from huggingface_hub import hf_hub_download

        allowed = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")}
        file = hf_hub_download(str(path), CONFIG_NAME, **allowed)
    except Exception:  # noqa: BLE001 - a pruned checkpoint without pruning_config.json still loads
        return None
    return PruningConfig.from_pretrained(file)


class _AutoSparseBase:
    _auto_class: Any = None

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is a loader: use {type(self).__name__}.from_pretrained(path_or_repo_id).")

    @classmethod
    def _model_class(cls, config):
        mapping = cls._auto_class._model_mapping
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
            raise ValueError("ignore_mismatched_sizes=True would re-initialise pruned weights; hf_sparsify loads recorded shapes exactly.")
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        config = kwargs.pop("config", None)
        if config is None:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        meta = dict(getattr(config, METADATA_KEY, None) or {})
        model_class = cls._model_class(config)
        if is_structured(config):
            base_config = dense_config(config)
            setattr(base_config, METADATA_KEY, meta)

            def __init__(self, cfg, *args, **kw):
                model_class.__init__(self, cfg, *args, **kw)
                apply_shapes(self, meta)

            shaped = type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})
            model, info = shaped.from_pretrained(pretrained_model_name_or_path, *model_args, config=base_config, output_loading_info=True, **kwargs)
            model.__class__ = model_class
            problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
            if problems:
                raise SparseCheckpointError(
                    f"{pretrained_model_name_or_path} does not match its recorded pruned shapes: {problems}. "
                    "The weights file and config.json come from different models, or the file is damaged."
                )
        else:
            model = model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if meta:
            attach_pruning_state(model, config=_load_pruning_config(pretrained_model_name_or_path, hub_kwargs))
            model.pruning_structured = bool(meta.get("structured"))
        return model


class AutoSparseModelForImageClassification(_AutoSparseBase):
    """Loads any image classifier hf_sparsify pruned (ViT, DeiT, DINOv2, ConvNeXt...), in one call."""

    _auto_class = AutoModelForImageClassification


class AutoSparseModel(_AutoSparseBase):
    """Loads the bare backbone (``ViTModel``, ``Dinov2Model``...) of a pruned checkpoint, in one call."""

    _auto_class = AutoModel
