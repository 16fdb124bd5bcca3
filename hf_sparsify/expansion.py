"""``hf_sparsify.expand``: widen chosen MLPs, heads or ConvNeXt channels with the model's function unchanged.

The inverse of structured pruning, for the SOSP paper's expand-then-prune study: the layers a global ranking pruned
least (:func:`hf_sparsify.bottleneck_report`) are widened, trained briefly so that the new units learn, and the
model is pruned back to the same budget (``examples/expand_then_prune.py``).

New units have zero outgoing weights (their consumer columns: ``fc2``, ``down_proj``, ``o_proj``, ``pwconv2``), so
the widened model computes what it computed before, and small random incoming weights, so that they can learn (see
:mod:`hf_sparsify.surgery.expand`, also for ConvNeXtV2's GRN). The widened model records its shapes in its config
like a structurally pruned one: ``save_pretrained`` and
:class:`~hf_sparsify.AutoSparseModelForImageClassification` reload it in one call; plain transformers loads it only
when every block has the same width (and refuses non-uniform widths loudly).

```python
>>> wide = hf_sparsify.expand(model, [0, 3], 2)          # blocks 0 and 3: their MLPs get twice the neurons
>>> [m.fc1.out_features for m in (layer.mlp for layer in wide.vit.layers)]
[384, 192, 192, 384]
>>> x = torch.randn(2, 3, 32, 32)
>>> torch.allclose(wide(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-5)
True
>>> wide.save_pretrained(tmp_dir)
>>> reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_dir)
>>> torch.equal(reloaded(pixel_values=x).logits, wide(pixel_values=x).logits)
True
```
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .adapters import StructureGroup, UnsupportedModelError, get_adapter
from .api import _record_dense_reference
from .errors import HfSparsifyError
from .pruned import attach_pruning_state
from .structured.bottleneck import BottleneckReport, BottleneckRow
from .structured.groups import KIND_NOUNS, resolve_kinds
from .surgery.expand import add_units, widened_width
from .surgery.shapes import get_metadata, record_shapes
from .utils import get_logger

__all__ = ["ExpansionError", "expand"]

logger = get_logger(__name__)


class ExpansionError(HfSparsifyError, ValueError):
    """Bad input to :func:`hf_sparsify.expand`: an unknown layer, a factor below 1, nothing to widen."""


def _check_factor(factor: Any) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise ExpansionError(f"factor must be a number ≥ 1 (2 gives twice the units), got {factor!r}.")
    if factor < 1:
        raise ExpansionError(f"factor must be ≥ 1 (2 gives twice the units), got {factor}: expand only widens; to remove units, prune.")
    return float(factor)


def _adapter(model: nn.Module):
    if not isinstance(model, nn.Module):
        raise TypeError(f"expand takes a transformers model (a torch nn.Module), got {type(model).__name__}.")
    adapter = get_adapter(model, allow_generic=True)
    if adapter.family == "generic":
        raise UnsupportedModelError(
            f"expand widens the MLPs, heads and channels a model adapter knows, and {type(model).__name__} "
            f"(model_type={getattr(getattr(model, 'config', None), 'model_type', None)!r}) has no adapter: expand supports "
            "ViT, DeiT, DINOv2 and ConvNeXt(V2)."
        )
    return adapter


def _as_items(layers: Any) -> list[Any]:
    if isinstance(layers, BottleneckReport):
        return list(layers.candidates())
    if isinstance(layers, (str, int, BottleneckRow)) or layers is None:
        return [layers]
    if isinstance(layers, Iterable):
        return list(layers)
    raise ExpansionError(f"layers must be group names, block indices, bottleneck rows or 'all', got {type(layers).__name__}.")


def _resolve(groups: list[StructureGroup], layers: Any, kinds: Sequence[str]) -> list[StructureGroup]:
    """The groups ``layers`` names, in model order (see :func:`expand`)."""
    by_name = {g.name: g for g in groups}
    blocks = {g.block: g.block_index for g in groups}
    num_blocks = len(blocks)
    of_kinds = [g for g in groups if g.kind in kinds]
    chosen: set[str] = set()
    items = _as_items(layers)
    if not items:
        raise ExpansionError("layers is empty: name the groups to widen (e.g. report.candidates()), block indices, or 'all'.")
    for item in items:
        if isinstance(item, BottleneckRow):
            item = item.name
        if item is None or item == "all":
            chosen.update(g.name for g in of_kinds)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < num_blocks:
                raise ExpansionError(f"block index {item} is out of range: this model has {num_blocks} blocks (0 to {num_blocks - 1}).")
            matched = [g.name for g in of_kinds if g.block_index == item]
            if not matched:
                raise ExpansionError(f"block {item} has no {' or '.join(KIND_NOUNS[k] + 's' for k in kinds)} to widen; name its groups instead.")
            chosen.update(matched)
        elif isinstance(item, str):
            if item in by_name:
                chosen.add(item)
            elif item in blocks:
                matched = [g.name for g in of_kinds if g.block == item]
                if not matched:
                    raise ExpansionError(f"block {item!r} has no {' or '.join(KIND_NOUNS[k] + 's' for k in kinds)} to widen; name its groups instead.")
                chosen.update(matched)
            else:
                names = list(by_name) + list(blocks)
                close = difflib.get_close_matches(item, names, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ExpansionError(
                    f"{item!r} is not a structure group or block of this model.{hint} Its groups are named like "
                    f"{', '.join(repr(n) for n in list(by_name)[:3])}: use the names bottleneck_report lists, or block indices."
                )
        else:
            raise ExpansionError(f"layers must hold group names, block indices or bottleneck rows, got {item!r} ({type(item).__name__}).")
    return [g for g in groups if g.name in chosen]


def expand(
    model: nn.Module,
    layers: Any,
    factor: float = 2.0,
    *,
    kinds: Sequence[str] = ("mlp", "channels"),
    round_to: int = 1,
    init_std: float | None = None,
    seed: int = 0,
    inplace: bool = False,
) -> nn.Module:
    """Widen structure groups of ``model`` by ``factor`` with its function unchanged (see the module docstring).

    Args:
        model: a ViT, DeiT, DINOv2 or ConvNeXt(V2) model (dense, pruned, or reloaded), of any dtype.
        layers: what to widen: structure-group names as :func:`hf_sparsify.bottleneck_report` lists them
            (``"vit.layers.3.mlp"``, ``"vit.layers.3.attention"``), block names or indices (their groups of ``kinds``),
            rows of a report, a :class:`~hf_sparsify.structured.BottleneckReport` (its ``candidates()``), or ``"all"``
            (every group of ``kinds``: a uniform widening).
        factor: ≥ 1; each chosen group gets ``round(width · factor)`` units (2: twice the units; 1.1: 10% more).
        kinds: the kinds block indices, block names and ``"all"`` select (default MLP neurons and ConvNeXt channels;
            add ``"heads"`` to widen attention heads too). Group names are taken whatever their kind.
        round_to: new widths are rounded up to a multiple of this (kernel-friendly widths).
        init_std: standard deviation of the new units' incoming weights; ``None``: each layer's own weight standard
            deviation.
        seed: seed of the new incoming weights.
        inplace: widen ``model`` itself; by default a widened deep copy is returned and ``model`` is left untouched.

    Returns:
        The widened model. Its config records the new shapes (and ``hf_sparsify.expansions``: the widths before and
        after); ``save_pretrained`` writes them and :class:`~hf_sparsify.AutoSparseModelForImageClassification`
        reloads it with identical logits.

    Raises:
        ExpansionError: an unknown group or block (the nearest name is suggested), ``factor`` below 1, a
            ``round_to`` below 1.
        UnsupportedModelError: a model without an adapter.
    """
    factor = _check_factor(factor)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ExpansionError(f"round_to must be a whole number ≥ 1 (1 disables rounding), got {round_to!r}.")
    if init_std is not None and not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
        raise ExpansionError(f"init_std must be a number ≥ 0 (or None: each layer's own weight scale), got {init_std!r}.")
    kinds = resolve_kinds(kinds)
    chosen = _resolve(_adapter(model).structure_groups(), layers, kinds)
    widths = {g.name: (g.num_units, widened_width(g.num_units, factor, round_to)) for g in chosen}
    if factor > 1 and all(old == new for old, new in widths.values()):
        raise ExpansionError(
            f"factor {factor:g} adds no unit to {', '.join(widths)} (widths {', '.join(str(w) for w, _ in widths.values())}): "
            "use a larger factor."
        )

    if not inplace:
        model = copy.deepcopy(model)
    adapter = get_adapter(model)
    _record_dense_reference(model, adapter)  # before the first change: the dense model's MACs, parameters, widths
    generator = torch.Generator().manual_seed(seed)
    groups = {g.name: g for g in adapter.structure_groups()}
    for name, (old, new) in widths.items():
        add_units(model, groups[name], new - old, init_std=init_std, generator=generator)
    grown = {name: [old, new] for name, (old, new) in widths.items() if new > old}
    if not grown:
        logger.info("hf_sparsify: expand with factor 1 changed nothing.")
        return model

    meta = get_metadata(model.config)
    history = meta.get("history") if isinstance(meta.get("history"), list) else []
    meta.setdefault("expansions", []).append({"factor": factor, "after_step": len(history), "widths": grown})
    model.pruning_structured = True
    record_shapes(model)
    attach_pruning_state(model)
    return model
