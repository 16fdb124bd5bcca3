"""What a structure costs: MACs per image and parameters, per unit of every structure group, and a protocol for
other costs (SPDY's measured latency).

MACs are counted by running one zero image through the model with hooks on every ``nn.Linear`` / ``nn.Conv2d``
(:func:`count_macs`); the attention score and value products (``q·kᵀ`` and ``attn·v``: ``2·tokens²·head_dim``
per head) are added for the attention modules the adapter knows. A structure's cost is linear in its width:

* an MLP neuron (ConvNeXt channel) costs ``positions × in_features`` MACs in its producer row(s) (``fc1``; ``gate``
  and ``up`` for SwiGLU) and ``positions × out_features`` in its consumer column (``fc2``), where ``positions`` is
  the number of tokens (or pixels) the layer is applied to per image;
* an attention head costs the same for its ``head_dim`` rows of ``q``, ``k``, ``v`` and columns of ``o_proj``, plus
  ``2·tokens²·head_dim`` for its score and value products.

Parameters follow the same pattern (weights and biases of the rows and columns, and per-unit extra parameters
such as GRN's). A :class:`CostModel` gives every group's cost at any width; allocators use it to meet a budget.

```python
>>> from hf_sparsify.adapters import get_adapter
>>> from hf_sparsify.structured import MacsCost, select_groups
>>> groups = select_groups(get_adapter(model), ["mlp", "heads"])
>>> costs = MacsCost().unit_costs(model, groups)      # MACs per image of one unit of each group
>>> costs[:2]                                           # a head: 65 tokens × 4·48·12 + 2·65²·12; a neuron: 65 × 2·48
[251160.0, 6240.0]
```
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..adapters import ATTENTION_HEAD, PRUNABLE_MODULE_TYPES, ModelAdapter, StructureGroup
from ..errors import HfSparsifyError

__all__ = [
    "CostModel",
    "LinearCostModel",
    "MacsCost",
    "ParamsCost",
    "UnitsCost",
    "MacsUnavailableError",
    "attention_query_modules",
    "count_macs",
    "count_params",
    "macs_unavailable_reason",
]


class MacsUnavailableError(HfSparsifyError, ValueError):
    """The model's MACs per image cannot be counted (it does not take images): the message says why."""


def attention_query_modules(adapter: ModelAdapter) -> dict[str, int]:
    """The query projections of the adapter's attention modules (``count_macs`` adds the attention products there),
    as ``{name: sections}``: a fused ``qkv`` projection holds 3 sections of which the query is one, a ``q_proj`` 1.
    Iterating gives the names."""
    if adapter.family == "generic":
        return {}
    return {g.producers[0]: g.sections(g.producers[0]) for g in adapter.structure_groups([ATTENTION_HEAD]) if g.kind == ATTENTION_HEAD}


def _row_size(layer: nn.Module) -> int:
    """Weights in one output row (channel) of a Linear / Conv2d: ``in_features``, or ``in_channels·kh·kw``."""
    return layer.weight[0].numel()


def _column_size(layer: nn.Module) -> int:
    """Weights in one input column (channel) of a Linear / Conv2d: ``out_features``, or ``out_channels·kh·kw``."""
    return layer.weight[:, 0].numel()


def _image_input(model: nn.Module, device, dtype) -> torch.Tensor:
    from ..adapters import get_adapter

    channels, height, width = get_adapter(model, allow_generic=True).image_input_shape()
    return torch.zeros(1, channels, height, width, device=device, dtype=dtype)


def macs_unavailable_reason(model: nn.Module) -> str | None:
    """Why :func:`count_macs` cannot count ``model``'s MACs per image without explicit inputs (it does not take
    ``pixel_values``), or ``None``."""
    try:
        accepts = "pixel_values" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # builtins without a signature: try and see
        accepts = True
    if accepts and getattr(model, "config", None) is not None:
        return None
    takes = getattr(model, "main_input_name", None) or "other inputs"
    return (
        f"MACs are counted per image, and {type(model).__name__} takes {takes!r}, not 'pixel_values' "
        "(pass example inputs to count them per example)"
    )


@torch.no_grad()
def count_macs(model: nn.Module, attention_modules: Sequence[str] | Mapping[str, int] | None = None, *, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """MACs per image of ``model``: one forward of a zero image (or of ``inputs``, one example) with hooks; works on
    the meta device.

    Args:
        attention_modules: query projections whose outputs give the attention products' size
            (:func:`attention_query_modules`); a mapping gives each one's sections (a fused ``qkv``: 3, of which
            the query is one).
        inputs: keyword inputs of one example (``{"input_ids": ...}``) for models that do not take images.

    Returns:
        ``{"total": int, "effective": int, "per_module": {name: macs}, "positions": {name: positions}}``:
        ``effective`` counts only non-zero weights of Linear/Conv2d layers (it equals ``total`` on the meta
        device); ``positions`` is the number of tokens or pixels each layer was applied to (for an attention
        module's ``"<query>.scores"`` entry: its number of tokens).

    Raises:
        MacsUnavailableError: the model does not take ``pixel_values`` and no ``inputs`` were given.
    """
    if inputs is None:
        reason = macs_unavailable_reason(model)
        if reason is not None:
            raise MacsUnavailableError(reason + ".")
    per_module: dict[str, int] = {}
    positions_of: dict[str, int] = {}
    effective = 0
    handles = []
    is_meta = next(model.parameters()).device.type == "meta"

    def linear_hook(name):
        def hook(module, args, output):
            nonlocal effective
            if isinstance(module, nn.Linear):
                positions = output.shape[:-1].numel()  # also right for a fully pruned layer (0 outputs)
            else:
                positions = output.shape[-1] * output.shape[-2] * output.shape[0]
            weight = module.weight
            macs = positions * weight.numel()
            per_module[name] = per_module.get(name, 0) + macs
            positions_of[name] = positions_of.get(name, 0) + positions
            nnz = weight.numel() if is_meta else int(torch.count_nonzero(weight))
            effective += positions * nnz

        return hook

    def attention_hook(name, sections):
        def hook(module, args, output):
            # q·kᵀ and attn·v: 2 · tokens² · (heads·head_dim), with tokens and width read off the query projection.
            tokens = output.shape[-2] if output.dim() == 3 else output.shape[1]
            key = name + ".scores"
            per_module[key] = per_module.get(key, 0) + 2 * tokens * tokens * (output.shape[-1] // sections)
            positions_of[key] = tokens

        return hook

    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULE_TYPES):
            handles.append(module.register_forward_hook(linear_hook(name)))
    sections_of = dict(attention_modules) if isinstance(attention_modules, Mapping) else dict.fromkeys(attention_modules or [], 1)
    for name, sections in sections_of.items():
        handles.append(model.get_submodule(name).register_forward_hook(attention_hook(name, int(sections))))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        if inputs is None:
            model(pixel_values=_image_input(model, param.device, param.dtype))
        else:
            model(**inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    total = sum(per_module.values())
    attention_total = sum(v for k, v in per_module.items() if k.endswith(".scores"))
    return {"total": total, "effective": effective + attention_total, "per_module": per_module, "positions": positions_of}


def count_params(model: nn.Module) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- cost models
@runtime_checkable
class CostModel(Protocol):
    """What a structure costs, for the allocators. ``unit`` names the quantity (``"MACs"``, ``"parameters"``,
    ``"seconds"``).

    * :meth:`total` is the whole model's cost (a budget given as a fraction is a fraction of it);
    * :meth:`group_costs` gives, for each group, its cost at each candidate width: the part of the model's cost
      that depends on the group's width. A measured cost (SPDY's latency tables) implements it by measurement;
      costs linear in the width derive from :class:`LinearCostModel`.
    """

    unit: str

    def total(self, model: nn.Module) -> float: ...

    def group_costs(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]]) -> list[list[float]]: ...


class LinearCostModel:
    """A cost proportional to each group's width: :meth:`unit_costs` gives the cost of one unit of each group; the
    global-threshold and per-layer allocators need such costs."""

    unit: str = ""

    def total(self, model: nn.Module) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_costs(self, model: nn.Module, groups: Sequence[StructureGroup]) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def group_costs(self, model: nn.Module, groups: Sequence[StructureGroup], widths: Sequence[Sequence[int]]) -> list[list[float]]:
        """``width × unit cost`` of every group at every candidate width."""
        unit = self.unit_costs(model, groups)
        return [[float(w) * c for w in ws] for ws, c in zip(widths, unit)]


class UnitsCost(LinearCostModel):
    """Every unit costs 1 (a budget in structures: neurons, heads, channels); the total is the groups' units."""

    unit = "units"

    def __init__(self, groups: Sequence[StructureGroup] | None = None):
        self.groups = groups

    def total(self, model: nn.Module) -> float:
        if self.groups is None:
            raise ValueError("UnitsCost.total needs the groups the budget counts: UnitsCost(groups)")
        return float(sum(g.num_units for g in self.groups))

    def unit_costs(self, model: nn.Module, groups: Sequence[StructureGroup]) -> list[float]:
        return [1.0] * len(groups)


class MacsCost(LinearCostModel):
    """MACs per image (one zero image through the model, see :func:`count_macs`). A head's cost includes its
    ``2·tokens²·head_dim`` attention products.

    Args:
        attention_modules: the query projections to count the attention products at; default: those of the
            model's adapter.
    """

    unit = "MACs"

    def __init__(self, attention_modules: list[str] | None = None):
        self.attention_modules = attention_modules
        self._last: dict[str, Any] | None = None

    def _count(self, model: nn.Module) -> dict[str, Any]:
        modules = self.attention_modules
        if modules is None:
            from ..adapters import get_adapter

            modules = attention_query_modules(get_adapter(model, allow_generic=True))
        self._last = count_macs(model, modules)
        return self._last

    def total(self, model: nn.Module) -> float:
        return float(self._count(model)["total"])

    def unit_costs(self, model: nn.Module, groups: Sequence[StructureGroup]) -> list[float]:
        counted = self._count(model)
        positions = counted["positions"]
        costs = []
        for group in groups:
            macs = 0
            for name in group.producers:
                macs += positions.get(name, 0) * _row_size(model.get_submodule(name)) * group.rows_per_unit(name)
            for name in group.consumers:
                macs += positions.get(name, 0) * _column_size(model.get_submodule(name)) * group.unit_size
            if group.kind == ATTENTION_HEAD:
                tokens = positions.get(group.producers[0] + ".scores", 0)
                macs += 2 * tokens * tokens * group.unit_size
            costs.append(float(macs))
        return costs


class ParamsCost(LinearCostModel):
    """Parameters: a unit owns its producer rows (weights and biases), its consumer columns and its entries of the
    group's extra parameters (GRN)."""

    unit = "parameters"

    def total(self, model: nn.Module) -> float:
        return float(count_params(model))

    def unit_costs(self, model: nn.Module, groups: Sequence[StructureGroup]) -> list[float]:
        costs = []
        for group in groups:
            params = 0
            for name in group.producers:
                layer = model.get_submodule(name)
                params += (_row_size(layer) + (layer.bias is not None)) * group.rows_per_unit(name)
            for name in group.consumers:
                params += _column_size(model.get_submodule(name)) * group.unit_size
            for name, dim in group.extra_params:
                shape = model.get_parameter(name).shape
                params += math.prod(size for i, size in enumerate(shape) if i != dim % len(shape)) * group.unit_size
            costs.append(float(params))
        return costs
