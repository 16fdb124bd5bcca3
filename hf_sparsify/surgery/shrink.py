"""Physical removal of structures (MLP neurons, attention heads, ConvNeXt channels) and bias folding.

Structured methods (VBP, SOSP, SPDY on widths) decide which units of a :class:`StructureGroup` to keep; the
functions here make the model physically smaller. The shapes are recorded afterwards by
:func:`hf_sparsify.surgery.shapes.record_shapes` so the one-call loader can rebuild the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.base import StructureGroup

__all__ = ["fold_into_bias", "remove_units", "keep_units"]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _sliced_layer(layer: nn.Module, index: torch.Tensor, dim: int) -> nn.Module:
    """A copy of an ``nn.Linear`` or ``nn.Conv2d`` (not grouped) keeping the output rows (``dim=0``) or input
    columns (``dim=1``) ``index``."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise TypeError(f"cannot remove channels of a grouped convolution ({layer})")
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"structured surgery supports nn.Linear and nn.Conv2d, not {type(layer).__name__}")
    index = index.to(layer.weight.device)
    weight = layer.weight.detach().index_select(dim, index).clone()
    bias = None
    if layer.bias is not None:
        bias = layer.bias.detach().clone() if dim == 1 else layer.bias.detach().index_select(0, index).clone()
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    else:
        new = nn.Conv2d(
            weight.shape[1], weight.shape[0], kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, bias=bias is not None, padding_mode=layer.padding_mode, **factory,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


def _pointwise_weight(layer: nn.Module, name: str) -> torch.Tensor:
    """The 2-D ``(out, in)`` weight of an ``nn.Linear`` or a 1×1 ``nn.Conv2d`` without padding (a view)."""
    if isinstance(layer, nn.Linear):
        return layer.weight
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1 and layer.padding in ((0, 0), "valid"):
        return layer.weight.flatten(1)
    raise TypeError(f"bias folding supports nn.Linear and 1x1 nn.Conv2d consumers, {name} is {layer}")


@torch.no_grad()
def fold_into_bias(model: nn.Module, group: StructureGroup, units: torch.Tensor, values: torch.Tensor) -> None:
    """Add ``W[:, rows(units)] @ values`` to each consumer's bias (creating the bias if the layer has none).

    This is VBP's mean-shift compensation: a removed unit whose activation is replaced by its mean ``values``
    contributes a constant to the consumer's output. With LayerScale after the consumer the fold stays exact,
    since the scale multiplies the whole consumer output, bias included. The new bias is computed in float64
    and written in the layer's dtype (one rounding, also for bf16 / fp16 models).

    Args:
        units: indices of the removed units; ``values``: one value per removed row (``len(units)*unit_size``),
            in the units' row order.
    """
    if group.blocks_exact_fold:
        raise ValueError(f"cannot fold removed units of {group.name} into a bias: {group.blocks_exact_fold}.")
    rows = group.unit_rows(units)
    for name in group.consumers:
        layer = model.get_submodule(name)
        weight = _pointwise_weight(layer, name)
        shift = weight[:, rows.to(weight.device)].double() @ values.to(weight.device).double()
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype))
        # in float64, rounded once to the model's dtype (bf16 / fp16 biases lose no more than half an ulp)
        layer.bias.copy_((layer.bias.double() + shift).to(layer.bias.dtype))


@torch.no_grad()
def keep_units(model: nn.Module, group: StructureGroup, keep: torch.Tensor) -> StructureGroup:
    """Shrink the group to the units in ``keep`` (sorted, unique indices). Returns the updated group.

    Producers lose rows (and bias entries; every section of a fused producer), consumers lose input columns,
    extra parameters lose entries, and the owner's count attribute (``num_attention_heads``) and size attributes
    (timm's ``attn_dim``) are updated.
    """
    keep = torch.as_tensor(keep, dtype=torch.long).unique(sorted=True)
    if keep.numel() and (keep.min() < 0 or keep.max() >= group.num_units):
        raise IndexError(f"unit indices out of range for {group.name} ({group.num_units} units)")
    rows = group.unit_rows(keep)
    for name in group.producers:
        _set_module(model, name, _sliced_layer(model.get_submodule(name), group.producer_rows(name, keep), dim=0))
    for name in group.consumers:
        _set_module(model, name, _sliced_layer(model.get_submodule(name), rows, dim=1))
    for param_name, dim in group.extra_params:
        owner_name, _, attr = param_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        param = getattr(owner, attr)
        new = nn.Parameter(param.detach().index_select(dim, rows.to(param.device)).clone(), requires_grad=param.requires_grad)
        setattr(owner, attr, new)
    if group.count_attribute:
        setattr(model.get_submodule(group.name), group.count_attribute, int(keep.numel()))
    for attribute, factor in group.size_attributes.items():
        setattr(model.get_submodule(group.name), attribute, int(keep.numel()) * int(factor))
    group.num_units = int(keep.numel())
    return group


def remove_units(model: nn.Module, group: StructureGroup, remove: torch.Tensor) -> StructureGroup:
    """Shrink the group by removing the units in ``remove`` (the complement of :func:`keep_units`)."""
    remove = torch.as_tensor(remove, dtype=torch.long)
    mask = torch.ones(group.num_units, dtype=torch.bool)
    mask[remove] = False
    return keep_units(model, group, mask.nonzero().flatten())
