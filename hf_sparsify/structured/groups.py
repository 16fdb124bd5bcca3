"""Which structures a structured method prunes: groups selected by kind and by name, and per-unit views of them.

A *structure group* (:class:`~hf_sparsify.adapters.StructureGroup`) is a set of same-kind units that share
tensors: the hidden neurons of one MLP, the heads of one attention, the hidden channels of one ConvNeXt block. The
adapter lists them; :func:`select_groups` picks those of some kinds, filtered by ``targets`` / ``ignore`` regexes,
with the errors a user needs when nothing is left.

```python
>>> from hf_sparsify.adapters import get_adapter
>>> from hf_sparsify.structured import select_groups
>>> groups = select_groups(get_adapter(model), ["heads", "mlp"])
>>> [(g.name, g.kind, g.num_units) for g in groups][:2]
[('vit.layers.0.attention', 'attention_head', 4), ('vit.layers.0.mlp', 'mlp_neuron', 192)]
```
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import nn

from ..adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, ModelAdapter, StructureGroup, UnsupportedModelError
from ..adapters.generic import describe_model
from ..configuration import PruningConfigError

__all__ = ["KIND_ALIASES", "KIND_NOUNS", "resolve_kinds", "select_groups", "group_names", "unit_scores", "group_output_scale", "output_scale"]

#: user-facing names of the structure kinds (``structures=["mlp", "heads"]``) and the adapter's kind constants
KIND_ALIASES = {"mlp": MLP_NEURON, "heads": ATTENTION_HEAD, "channels": CONV_CHANNEL}
#: how messages and summaries name one unit of each kind (a ConvNeXt channel is a hidden neuron of the block's
#: pointwise MLP ``pwconv1 → GELU → pwconv2``)
KIND_NOUNS = {MLP_NEURON: "MLP neuron", ATTENTION_HEAD: "attention head", CONV_CHANNEL: "ConvNeXt channel"}
_OWNER_NOUNS = {MLP_NEURON: "MLP", ATTENTION_HEAD: "attention", CONV_CHANNEL: "MLP"}


def resolve_kinds(kinds: Iterable[str]) -> list[str]:
    """The adapter's kind constants for ``kinds`` (aliases ``"mlp"``, ``"heads"``, ``"channels"`` or the constants
    themselves), without duplicates, in the order given."""
    out: list[str] = []
    for kind in kinds:
        resolved = KIND_ALIASES.get(kind, kind)
        if resolved not in KIND_NOUNS:
            valid = sorted(KIND_ALIASES) + sorted(KIND_NOUNS)
            raise PruningConfigError(f"unknown structure kind {kind!r}; use one of {valid}.")
        if resolved not in out:
            out.append(resolved)
    return out


def group_names(group: StructureGroup) -> list[str]:
    """The names ``targets`` / ``ignore`` regexes are searched in: the group's owner and its layers."""
    return [group.name, *group.producers, *group.consumers]


def _owner_noun(kinds: Sequence[str]) -> str:
    nouns = {_OWNER_NOUNS[k] for k in kinds}
    return nouns.pop() if len(nouns) == 1 else "structure group"


def select_groups(
    adapter: ModelAdapter,
    kinds: Iterable[str],
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    *,
    method: str = "This structured method",
    require_every_kind: bool = False,
) -> list[StructureGroup]:
    """The structure groups of ``kinds`` that a method prunes, in model order.

    Args:
        adapter: the model's adapter (a model without one has no structures: a clear error).
        kinds: kinds or their aliases (``"mlp"``, ``"heads"``, ``"channels"``); a kind the model does not have is
            skipped (ConvNeXt has channels, not MLP neurons) unless ``require_every_kind``.
        targets: regexes; a group is kept when one of them is found (``re.search``) in its owner's name or one of
            its layers' names (``r"layers\\.(0|1)\\."``, ``r"mlp$"``). ``None``: every group.
        ignore: regexes of groups to leave dense, applied after ``targets``.
        method: the method's name, for messages.
        require_every_kind: refuse kinds the model does not have (for methods whose user names the kinds).

    Raises:
        UnsupportedModelError: the model has no adapter, or none of the kinds.
        PruningConfigError: ``targets`` / ``ignore`` leave nothing to prune.
    """
    kinds = resolve_kinds(kinds)
    noun = _owner_noun(kinds)
    if adapter.family == "generic":
        raise UnsupportedModelError(
            f"{method} prunes the {noun}s a model adapter knows, and {describe_model(adapter.model)} has no adapter: "
            f"{method} supports ViT, DeiT, DINOv2, DINOv3, ConvNeXt(V2) and timm's VisionTransformer and ConvNeXt. "
            f"targets= only selects among those {noun}s."
        )
    available = [g for g in adapter.structure_groups(kinds) if g.kind in kinds]
    if require_every_kind:
        missing = [k for k in kinds if not any(g.kind == k for g in available)]
        if missing:
            have = sorted({g.kind for g in adapter.structure_groups()})
            raise UnsupportedModelError(
                f"{type(adapter.model).__name__} has no {', '.join(KIND_NOUNS[k] + 's' for k in missing)} for {method} to prune; "
                f"its structures are: {', '.join(KIND_NOUNS[k] + 's' for k in have) or 'none'}."
            )
    if not available:
        raise UnsupportedModelError(f"The {adapter.family} adapter found no {noun} in {type(adapter.model).__name__}: there is nothing for {method} to prune.")
    groups = available
    if targets is not None:
        groups = [g for g in groups if any(re.search(p, n) for p in targets for n in group_names(g))]
        if not groups:
            units = " and ".join(KIND_NOUNS[k] + "s" for k in dict.fromkeys(g.kind for g in available))
            raise PruningConfigError(
                f"targets={targets} matched no {noun} of this model; {method} prunes {units}, e.g. targets=[r'{re.escape(available[0].name)}$']."
            )
    if ignore:
        groups = [g for g in groups if not any(re.search(p, n) for p in ignore for n in group_names(g))]
        if not groups:
            raise PruningConfigError(f"ignore={ignore} excluded every {noun}: nothing is left for {method} to prune.")
    return groups


def unit_scores(row_scores: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Per-unit scores from per-row scores: the sum over each unit's ``unit_size`` rows (a head's ``head_dim``
    output coordinates); unchanged for neurons and channels (``unit_size == 1``)."""
    if unit_size == 1:
        return row_scores
    return row_scores.reshape(-1, unit_size).sum(-1)


def output_scale(consumer_weight: torch.Tensor, layer_scale: torch.Tensor | None = None) -> float:
    """Mean over the consumer's input columns of ``‖γ ⊙ W[:, j]‖²``, in float64: how much output variance one row
    of unit variance adds on average (``γ``: the LayerScale after the consumer, if any)."""
    w = consumer_weight.detach().to(torch.float64).flatten(1)  # a 1×1 Conv2d's (out, in, 1, 1) as (out, in)
    if layer_scale is not None:
        w = w * layer_scale.detach().to(torch.float64).reshape(-1, 1)
    return float(w.square().sum(0).mean()) if w.shape[1] else 0.0


def group_output_scale(model: nn.Module, group: StructureGroup) -> float:
    """:func:`output_scale` of a group's consumers (summed over them; one consumer in every built-in adapter),
    LayerScale included: the factor that puts a row's variance in units of the residual stream the group writes to."""
    gamma = model.get_parameter(group.layer_scale) if group.layer_scale else None
    return sum(output_scale(model.get_submodule(name).weight, gamma) for name in group.consumers)
