"""Widening structures: the inverse of shrinking, with the model's function unchanged.

:func:`add_units` gives a :class:`~hf_sparsify.adapters.StructureGroup` more units (MLP hidden neurons, SwiGLU
gate/up pairs, attention heads, ConvNeXt channels):

* every **consumer** (``fc2``, ``down_proj``, ``o_proj``, ``pwconv2``) gets new input columns that are **zero**, so
  the new units write nothing and the model computes exactly what it computed before;
* every **producer** (``fc1``; ``gate_proj`` + ``up_proj``; ``q``/``k``/``v``; ``pwconv1``) gets new rows drawn from
  a normal distribution with the standard deviation of the layer's existing weights (or ``init_std``), and zero
  bias entries, so that training can grow the new units: the gradient of a zero consumer column is the unit's
  activation times the upstream gradient, which is not zero;
* extra per-unit parameters get zero entries, and the owner's unit count (``num_attention_heads``) is updated.

ConvNeXtV2's GRN normalises each channel by the **mean over channels** of the spatial norms, so new channels with
non-zero activations would change every existing channel. There the new channels' ``pwconv1`` rows stay zero
(their activations, hence norms, are exactly zero), the existing GRN scales are multiplied by ``C / (C + n)`` (the
mean over ``C + n`` channels is ``C / (C + n)`` times the old one), and the new channels' GRN biases are drawn at
random instead: a new channel then outputs its constant bias, its zero ``pwconv2`` column receives a gradient, and
the unit starts learning from there. The function is unchanged up to GRN's ``1e-6`` in the denominator (a relative
change of about ``1e-6 · n / C`` of the normalised features, below float32 resolution).

The shapes are recorded afterwards by :func:`hf_sparsify.surgery.shapes.record_shapes` (``hf_sparsify.expand`` does
it), so that the widened model saves and reloads in one call.

```python
>>> from hf_sparsify.adapters import get_adapter
>>> from hf_sparsify.surgery import add_units
>>> import copy
>>> wide = copy.deepcopy(model)
>>> mlp = [g for g in get_adapter(wide).structure_groups() if g.kind == "mlp_neuron"][0]
>>> add_units(wide, mlp, 64).num_units
256
>>> x = torch.randn(2, 3, 32, 32)
>>> torch.allclose(wide(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-5)
True
```
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..adapters.base import StructureGroup

__all__ = ["add_units", "widened_width"]


def widened_width(width: int, factor: float, round_to: int = 1) -> int:
    """The width of a group of ``width`` units widened by ``factor`` (≥ 1): ``round(width · factor)``, rounded up to a
    multiple of ``round_to``, never narrower than ``width``.

    ```python
    >>> from hf_sparsify.surgery import widened_width
    >>> widened_width(192, 2.0), widened_width(192, 1.1), widened_width(192, 1.1, round_to=8), widened_width(4, 1.1)
    (384, 211, 216, 4)
    ```
    """
    wide = max(width, int(round(width * factor)))
    if round_to > 1 and wide > width:
        wide = int(math.ceil(wide / round_to) * round_to)
    return wide


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _weight_std(weight: torch.Tensor) -> float:
    """The standard deviation of a layer's weights (float32 or better), a fallback of 0.02 for degenerate weights."""
    std = float(weight.detach().float().std()) if weight.numel() > 1 else 0.0
    return std if math.isfinite(std) and std > 0 else 0.02


def _normal(shape, std: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Normal values drawn in float32 on the CPU (reproducible for a seed on any device), cast once to ``like``'s
    dtype and device."""
    values = torch.randn(shape, generator=generator, dtype=torch.float32) * std
    return values.to(device=like.device, dtype=like.dtype)


def _grown_linear(layer: nn.Linear, extra: int, dim: int, new_values: torch.Tensor | None) -> nn.Linear:
    """A copy of ``layer`` with ``extra`` more output rows (``dim=0``, filled with ``new_values`` or zeros, zero bias
    entries) or input columns (``dim=1``, zeros; the bias is unchanged)."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"widening supports nn.Linear producers and consumers, got {type(layer).__name__}")
    weight = layer.weight.detach()
    out_features = layer.out_features + (extra if dim == 0 else 0)
    in_features = layer.in_features + (extra if dim == 1 else 0)
    new = nn.Linear(in_features, out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: layer.out_features, : layer.in_features].copy_(weight)
        if dim == 0 and new_values is not None:
            new.weight[layer.out_features :].copy_(new_values)
        if layer.bias is not None:
            new.bias.zero_()
            new.bias[: layer.out_features].copy_(layer.bias.detach())
    new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


def _is_grn(module: nn.Module) -> bool:
    """Whether ``module`` is a Global Response Normalisation (ConvNeXtV2): it normalises by the mean over units."""
    try:
        from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2GRN
    except ImportError:  # pragma: no cover - a transformers without ConvNeXtV2
        return False
    return isinstance(module, ConvNextV2GRN)


def _grown_param(param: nn.Parameter, dim: int, extra: int, new_values: torch.Tensor | None = None) -> nn.Parameter:
    shape = list(param.shape)
    shape[dim] = extra
    tail = new_values.reshape(shape) if new_values is not None else torch.zeros(shape, device=param.device, dtype=param.dtype)
    return nn.Parameter(torch.cat([param.detach(), tail.to(device=param.device, dtype=param.dtype)], dim=dim), requires_grad=param.requires_grad)


@torch.no_grad()
def add_units(
    model: nn.Module,
    group: StructureGroup,
    count: int,
    *,
    init_std: float | None = None,
    generator: torch.Generator | None = None,
) -> StructureGroup:
    """Give ``group`` ``count`` more units without changing what the model computes (see the module docstring).

    Args:
        count: units added (heads count as one unit of ``head_dim`` rows); ``0`` changes nothing.
        init_std: standard deviation of the new producer rows; ``None``: each producer's own weight standard
            deviation (new units start on the scale of the existing ones).
        generator: the random generator of the new rows (a seeded ``torch.Generator`` makes them reproducible).

    Returns:
        The updated group (``num_units`` is the new width).
    """
    if count < 0:
        raise ValueError(f"add_units adds units: count must be ≥ 0, got {count} (use keep_units/remove_units to remove them).")
    if count == 0:
        return group
    rows = count * group.unit_size
    owners = {name.rpartition(".")[0] for name, _ in group.extra_params}
    grn = [name for name in owners if _is_grn(model.get_submodule(name))]
    for name in group.producers:
        layer = model.get_submodule(name)
        values = None if grn else _normal((rows, layer.in_features), init_std if init_std is not None else _weight_std(layer.weight), generator, layer.weight)
        _set_module(model, name, _grown_linear(layer, rows, 0, values))
    for name in group.consumers:
        _set_module(model, name, _grown_linear(model.get_submodule(name), rows, 1, None))
    dense_rows = group.num_units * group.unit_size
    for param_name, dim in group.extra_params:
        owner_name, _, attr = param_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        param = getattr(owner, attr)
        values = None
        if owner_name in grn:
            if attr == "weight":
                # the mean over C + n channels (n of them zero) is C / (C + n) of the old one: rescale the old scales
                scale = dense_rows / (dense_rows + rows)
                param = nn.Parameter((param.detach().double() * scale).to(param.dtype), requires_grad=param.requires_grad)
            elif attr == "bias":
                shape = [1] * param.dim()
                shape[dim] = rows
                values = _normal(shape, init_std if init_std is not None else _weight_std(param), generator, param)
        setattr(owner, attr, _grown_param(param, dim, rows, values))
    group.num_units += count
    if group.count_attribute:
        setattr(model.get_submodule(group.name), group.count_attribute, group.num_units)
    return group
