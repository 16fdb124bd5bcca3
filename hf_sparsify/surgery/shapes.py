"""Shape records: how a structurally pruned model differs from the dense model its config describes.

After structured surgery, :func:`record_shapes` compares the model against a dense skeleton built from its
config (on the meta device, so it costs no memory) and writes the differences into ``model.config.hf_sparsify``,
which is saved in ``config.json``:

* ``module_shapes``: ``{module name: {"type": "Linear", "in_features": .., "out_features": .., "bias": ..}}``
* ``parameter_shapes``: ``{parameter name: [shape]}`` for other parameters (ConvNeXtV2's GRN)
* ``module_attributes``: ``{module name: {"num_attention_heads": ..}}``
* ``per_layer_config``: the transformers-native per-layer overrides (``intermediate_size``,
  ``num_attention_heads``, integer ``mlp_ratio``), written into the saved ``config.json`` so that plain
  transformers refuses the checkpoint loudly (AmbiguousGlobalPerLayerAttributeError) instead of re-initialising
  weights, even with ``ignore_mismatched_sizes=True``. Widths that no config field can express (ConvNeXt hidden
  channels, DINOv2 widths that are not whole multiples of ``hidden_size``) have no such guard: plain transformers
  then stops with its size-mismatch error, and only an explicit ``ignore_mismatched_sizes=True`` would load them
  re-initialised.

Where every block has the same width, the standard config field is set instead (``intermediate_size``,
``num_attention_heads`` with an explicit ``head_dim``), and plain transformers loads the checkpoint.
:func:`apply_shapes` rebuilds the shapes on a freshly built dense model, before weights are loaded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..adapters import ATTENTION_HEAD, MLP_NEURON, get_adapter

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


def _set_standard_fields(model: nn.Module, adapter) -> dict[int, dict[str, Any]]:
    """Where every block has the same MLP width or head count, set the standard config field; otherwise return
    transformers-native per-layer overrides. Only transformer families have such fields."""
    config = model.config
    per_layer: dict[int, dict[str, Any]] = {}
    groups = adapter.structure_groups() if adapter.family != "generic" else []
    by_kind: dict[str, list] = {}
    for group in groups:
        if group.per_layer_config_key:
            by_kind.setdefault(group.kind, []).append(group)

    heads = by_kind.get(ATTENTION_HEAD, [])
    if heads:
        counts = [g.num_units for g in heads]
        head_dim = heads[0].unit_size
        current = config.num_attention_heads
        if len(set(counts)) == 1:
            if counts[0] != current:
                config.head_dim = head_dim
                config.num_attention_heads = counts[0]
        else:
            config.head_dim = head_dim
            for g, n in zip(heads, counts):
                if n != current:
                    per_layer.setdefault(g.block_index, {})["num_attention_heads"] = n

    mlps = by_kind.get(MLP_NEURON, [])
    if mlps:
        key = mlps[0].per_layer_config_key
        widths = [g.num_units for g in mlps]
        if key == "intermediate_size":
            if len(set(widths)) == 1:
                config.intermediate_size = widths[0]
            else:
                for g, w in zip(mlps, widths):
                    if w != config.intermediate_size:
                        per_layer.setdefault(g.block_index, {})["intermediate_size"] = w
        elif key == "mlp_ratio":
            # DINOv2's mlp_ratio is an int: only widths that are whole multiples of hidden_size are expressible.
            hidden = config.hidden_size
            swiglu = bool(getattr(config, "use_swiglu_ffn", False))
            expressible = [not swiglu and w % hidden == 0 for w in widths]
            if len(set(widths)) == 1 and expressible[0]:
                config.mlp_ratio = widths[0] // hidden
            elif all(expressible):
                for g, w in zip(mlps, widths):
                    if w // hidden != config.mlp_ratio:
                        per_layer.setdefault(g.block_index, {})["mlp_ratio"] = w // hidden
    return per_layer


def record_shapes(model: nn.Module) -> dict[str, Any]:
    """Record how ``model`` differs from the dense model of its config (see the module docstring).

    Returns the metadata dict stored at ``model.config.hf_sparsify``.
    """
    meta = get_metadata(model.config)
    for key in _SHAPE_KEYS:
        meta.pop(key, None)
    adapter = get_adapter(model, allow_generic=True)
    per_layer = _set_standard_fields(model, adapter)
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
        if group.count_attribute:
            value = getattr(model.get_submodule(group.name), group.count_attribute)
            if value != getattr(skeleton.get_submodule(group.name), group.count_attribute):
                module_attributes.setdefault(group.name, {})[group.count_attribute] = int(value)

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


def copy_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(meta)
