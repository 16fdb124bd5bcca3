"""Shape records: how a structurally pruned model differs from the dense model its config describes.

After structured surgery, :func:`record_shapes` compares the model against a dense skeleton built from its
config (on the meta device, so it costs no memory) and writes the differences into ``model.config.hf_sparsify``,
which is saved in ``config.json``:

* ``module_shapes``: ``{module name: {"type": "Linear", "in_features": .., "out_features": .., "bias": ..}}``
* ``parameter_shapes``: ``{parameter name: [shape]}`` for other parameters (ConvNeXtV2's GRN)
* ``module_attributes``: ``{module name: {"num_attention_heads": ..}}`` (timm's attention: ``num_heads`` and
  ``attn_dim``)
* ``per_layer_config``: the transformers-native per-layer overrides (``intermediate_size``,
  ``num_attention_heads``, integer ``mlp_ratio``), written into the saved ``config.json`` so that plain
  transformers refuses the checkpoint loudly (AmbiguousGlobalPerLayerAttributeError) instead of re-initialising
  weights, even with ``ignore_mismatched_sizes=True``. Widths that no config field can express (ConvNeXt hidden
  channels, DINOv2 widths that are not whole multiples of ``hidden_size``) have no such guard: plain transformers
  then stops with its size-mismatch error, and only an explicit ``ignore_mismatched_sizes=True`` would load them
  re-initialised.

Where every block has the same width, the standard config field is set instead (``intermediate_size``,
``num_attention_heads`` with an explicit ``head_dim``), and plain transformers loads the checkpoint. Which config
fields hold widths is the adapter's knowledge (:meth:`~hf_sparsify.adapters.ModelAdapter.width_config_fields`).
:func:`apply_shapes` rebuilds the shapes on a freshly built dense model, before weights are loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapters import get_adapter

__all__ = ["METADATA_KEY", "get_metadata", "dense_config", "dense_skeleton", "record_shapes", "apply_shapes", "is_structured"]

METADATA_KEY = "hf_sparsify"
_SHAPE_KEYS = ("module_shapes", "parameter_shapes", "module_attributes", "per_layer_config")


def get_metadata(config) -> dict[str, Any]:
    """The hf_sparsify metadata stored on a model config (created empty if absent)."""
    meta = getattr(config, METADATA_KEY, None)
    if not isinstance(meta, dict):
        meta = {}
        setattr(config, METADATA_KEY, meta)
    return meta


def is_structured(config) -> bool:
    """Whether the config records shapes that differ from its dense model, i.e. the checkpoint needs
    ``AutoSparseModelForImageClassification`` (uniformly shrunk models set the standard fields instead and load
    with plain transformers)."""
    meta = getattr(config, METADATA_KEY, None) or {}
    return any(meta.get(key) for key in _SHAPE_KEYS)


def dense_config(config):
    """A copy of ``config`` that describes the homogeneous model: no per-layer overrides, no shape records."""
    data = config.to_dict()
    data.pop("per_layer_config", None)
    data.pop(METADATA_KEY, None)
    data.pop("transformers_version", None)
    new = type(config).from_dict(data)
    return new


def dense_skeleton(model: nn.Module) -> nn.Module:
    """The model its config describes, built on the meta device (no memory, no initialisation cost)."""
    config = dense_config(model.config)
    with torch.device("meta"):
        return type(model)(config)


def _signature(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels, "bias": module.bias is not None}
    return None


def _set_width_fields(model: nn.Module, adapter) -> dict[int, dict[str, Any]]:
    """Set the config fields that hold the model's widths where every block agrees (the adapter knows which:
    :meth:`~hf_sparsify.adapters.ModelAdapter.width_config_fields`) and return the per-layer overrides."""
    fields, per_layer = adapter.width_config_fields()
    for key, value in fields.items():
        setattr(model.config, key, value)
    return per_layer


def record_shapes(model: nn.Module) -> dict[str, Any]:
    """Record how ``model`` differs from the dense model of its config (see the module docstring).

    Returns the metadata dict stored at ``model.config.hf_sparsify``.
    """
    meta = get_metadata(model.config)
    for key in _SHAPE_KEYS:
        meta.pop(key, None)
    adapter = get_adapter(model, allow_generic=True)
    per_layer = _set_width_fields(model, adapter)
    skeleton = dense_skeleton(model)

    module_shapes: dict[str, Any] = {}
    covered: set[str] = set()
    for name, module in model.named_modules():
        sig = _signature(module)
        if sig is None:
            continue
        covered.update(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
        try:
            ref = skeleton.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{name} does not exist in the dense model of this config; shapes cannot be recorded") from None
        if sig != _signature(ref):
            module_shapes[name] = sig

    parameter_shapes: dict[str, list[int]] = {}
    reference = dict(skeleton.named_parameters())
    for name, param in model.named_parameters():
        if name in covered:
            continue
        ref = reference.get(name)
        if ref is None or tuple(ref.shape) != tuple(param.shape):
            parameter_shapes[name] = list(param.shape)

    module_attributes: dict[str, dict[str, int]] = {}
    for group in adapter.structure_groups() if adapter.family != "generic" else []:
        attributes = ([group.count_attribute] if group.count_attribute else []) + list(group.size_attributes)
        for attribute in attributes:
            value = getattr(model.get_submodule(group.name), attribute)
            if value != getattr(skeleton.get_submodule(group.name), attribute):
                module_attributes.setdefault(group.name, {})[attribute] = int(value)

    for key, value in (
        ("module_shapes", module_shapes),
        ("parameter_shapes", parameter_shapes),
        ("module_attributes", module_attributes),
        ("per_layer_config", {str(k): v for k, v in sorted(per_layer.items())}),
    ):
        if value:
            meta[key] = value
    meta["structured"] = bool(module_shapes or parameter_shapes or module_attributes or per_layer) or meta.get("structured", False)
    return meta


def _new_module(template: nn.Module, sig: dict[str, Any]) -> nn.Module:
    kind = sig["type"]
    if kind == "Linear":
        return nn.Linear(sig["in_features"], sig["out_features"], bias=sig["bias"])
    if kind == "Conv2d":
        return nn.Conv2d(
            sig["in_channels"],
            sig["out_channels"],
            kernel_size=template.kernel_size,
            stride=template.stride,
            padding=template.padding,
            dilation=template.dilation,
            groups=template.groups,
            bias=sig["bias"],
            padding_mode=template.padding_mode,
        )
    raise ValueError(f"unknown module type {kind!r} in the shape record")


def apply_shapes(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """Give a freshly built dense model the recorded shapes (weights uninitialised: load them afterwards)."""
    for name, sig in (meta.get("module_shapes") or {}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        template = getattr(parent, child)
        new = _new_module(template, sig)
        new.to(device=template.weight.device, dtype=template.weight.dtype)
        setattr(parent, child, new)
    for name, shape in (meta.get("parameter_shapes") or {}).items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        old = getattr(owner, attr, None)
        device = old.device if isinstance(old, torch.Tensor) else None
        dtype = old.dtype if isinstance(old, torch.Tensor) else torch.float32
        setattr(owner, attr, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
    for name, attributes in (meta.get("module_attributes") or {}).items():
        module = model.get_submodule(name)
        for attr, value in attributes.items():
            setattr(module, attr, value)
    return model
