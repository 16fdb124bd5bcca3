"""``sparsity_report(model)``: per-layer and global sparsity, parameter counts, MACs per image.

```python
>>> import hf_sparsify
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> report = hf_sparsify.sparsity_report(pruned)
>>> str(report).splitlines()[0]                  # str(report) is a table
'Sparsity report: ViTForImageClassification'
>>> report.to_dict()["global"]["sparsity"]
0.5
>>> report.macs["pruned"] == report.macs["dense"]   # unstructured: the shapes, hence the MACs, are dense
True
```

MACs are counted by running one image through the model with hooks on every ``nn.Linear`` / ``nn.Conv2d``
(attention score and value products are added for the adapter's attention modules; see
:func:`hf_sparsify.structured.count_macs`):

* ``dense``: the model its config describes before any structured pruning, on the meta device;
* ``pruned``: the current shapes (physically smaller after structured pruning);
* ``effective``: the current shapes counting only non-zero weights (what a sparse kernel could skip).

A model that does not take images (a text model pruned with ``targets=``) has no MACs per image: they are
``None`` and ``report.macs_unavailable`` says why (pass ``example_inputs`` to count them per example).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import get_adapter
from .structured.costs import attention_query_modules, count_macs, macs_unavailable_reason
from .surgery.shapes import METADATA_KEY, dense_skeleton

__all__ = ["SparsityReport", "LayerStats", "sparsity_report", "count_macs"]


@dataclass
class LayerStats:
    """One prunable layer of a :class:`SparsityReport`: its shape, zeros, and MACs per image (dense and counting
    non-zero weights only)."""

    name: str
    role: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    macs: int | None = None
    effective_macs: int | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "shape": list(self.shape),
            "numel": self.numel,
            "zeros": self.zeros,
            "sparsity": round(self.sparsity, 6),
            "macs": self.macs,
            "effective_macs": self.effective_macs,
        }


@dataclass
class SparsityReport:
    """The result of :func:`sparsity_report`. ``str(report)`` is a table; ``to_dict``/``to_json`` give data."""

    model_class: str
    layers: list[LayerStats]
    total_params: int
    zero_params: int
    macs: dict[str, int | None]
    structures: list[dict[str, Any]] = field(default_factory=list)
    dense_params: int | None = None
    #: why ``macs`` holds no counts (the model does not take images, or its forward pass failed), else None
    macs_unavailable: str | None = None

    @property
    def targeted_numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def targeted_zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Global sparsity over the reported (prunable) layers."""
        return self.targeted_zeros / self.targeted_numel if self.targeted_numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_class": self.model_class,
            "global": {
                "sparsity": round(self.sparsity, 6),
                "targeted_params": self.targeted_numel,
                "targeted_zeros": self.targeted_zeros,
                "total_params": self.total_params,
                "zero_params": self.zero_params,
                "dense_params": self.dense_params,
                "model_sparsity": round(self.zero_params / self.total_params, 6) if self.total_params else 0.0,
            },
            "macs": dict(self.macs),
            **({"macs_unavailable": self.macs_unavailable} if self.macs_unavailable else {}),
            "layers": [layer.to_dict() for layer in self.layers],
            "structures": self.structures,
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        rows = [("layer", "role", "shape", "params", "zeros", "sparsity")]
        for layer in self.layers:
            rows.append((layer.name, layer.role, "x".join(map(str, layer.shape)), f"{layer.numel:,}", f"{layer.zeros:,}", f"{layer.sparsity:.1%}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Sparsity report: {self.model_class}"]
        for k, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.structures:
            lines.append("")
            lines.append("Structures (kept / dense):")
            for s in self.structures:
                lines.append(f"  {s['name']:<40} {s['kind']:<15} {s['units']:>6} / {s['dense_units'] if s['dense_units'] is not None else '?':<6}")
        lines.append("")
        lines.append(
            f"Targeted layers: {self.targeted_zeros:,} of {self.targeted_numel:,} weights are zero "
            f"(global sparsity {self.sparsity:.2%})."
        )
        lines.append(f"All parameters: {self.total_params:,} ({self.zero_params:,} zero)" + (f"; dense model: {self.dense_params:,}" if self.dense_params else "") + ".")

        def fmt(v):
            return f"{v / 1e6:,.2f} M" if v is not None else "n/a"

        if self.macs_unavailable:
            lines.append(f"MACs: unavailable ({self.macs_unavailable}).")
        else:
            lines.append(
                f"MACs per image: dense {fmt(self.macs.get('dense'))}, pruned shapes {fmt(self.macs.get('pruned'))}, "
                f"non-zero weights only {fmt(self.macs.get('effective'))}."
            )
        return "\n".join(lines)


def sparsity_report(model: nn.Module, *, compute_macs: bool = True, example_inputs: dict[str, Any] | None = None) -> SparsityReport:
    """Per-layer and global sparsity of ``model``'s prunable layers, parameter counts, and MACs per image for the
    dense and the pruned shapes. Models without an adapter report every ``nn.Linear``/``nn.Conv2d``.

    Args:
        compute_macs: count MACs (one forward pass of a zero image, and one of the dense model on the meta device).
        example_inputs: keyword inputs of one example for models that do not take images (``{"input_ids": ...}``):
            MACs are then counted per such example. Without them, such a model's MACs are ``None`` and
            ``macs_unavailable`` says why.
    """
    adapter = get_adapter(model, allow_generic=True)
    if adapter.family == "generic":
        layers = adapter.select_layers([r".*"])
    else:
        layers = adapter.prunable_layers()
    stats = []
    for layer in layers:
        w = layer.weight.detach()
        numel = w.numel()
        zeros = numel - int(torch.count_nonzero(w)) if w.device.type != "meta" else 0
        stats.append(LayerStats(name=layer.name, role=layer.role, shape=tuple(w.shape), numel=numel, zeros=zeros))

    total = sum(p.numel() for p in model.parameters())
    zero = sum(p.numel() - int(torch.count_nonzero(p.detach())) for p in model.parameters())

    meta = getattr(model.config, METADATA_KEY, None) or {}
    macs: dict[str, int | None] = {"dense": meta.get("dense_macs"), "pruned": None, "effective": None}
    dense_params = meta.get("dense_params")
    unavailable = None
    if compute_macs:
        queries = attention_query_modules(adapter)
        unavailable = macs_unavailable_reason(model) if example_inputs is None else None
        if unavailable is None:
            try:
                current = count_macs(model, queries, inputs=example_inputs)
            except Exception as err:  # noqa: BLE001
                if adapter.family != "generic" or example_inputs is not None:
                    raise  # a supported model (or the caller's inputs) must run: a real fault
                # an architecture without an adapter may need more than an image (CLIP needs text too): say why
                unavailable = f"one forward pass with a zero image failed: {type(err).__name__}: {str(err)[:200]}"
        if unavailable is None:
            macs["pruned"], macs["effective"] = current["total"], current["effective"]
            for s in stats:
                s.macs = current["per_module"].get(s.name)
                if s.macs is not None and s.numel:
                    s.effective_macs = round(s.macs * (1 - s.sparsity))
        if unavailable is not None or example_inputs is not None:
            macs["dense"] = None  # counted per image, or not at all: not comparable with these counts
        need_dense_macs = macs["dense"] is None and unavailable is None and example_inputs is None
        if need_dense_macs or dense_params is None:
            try:
                skeleton = dense_skeleton(model)
                if need_dense_macs:
                    macs["dense"] = count_macs(skeleton, queries)["total"]
                if dense_params is None:
                    dense_params = sum(p.numel() for p in skeleton.parameters())
            except Exception:  # noqa: BLE001 - models that cannot run on the meta device
                pass

    structures = []
    if adapter.family != "generic":
        try:
            skeleton_groups = {g.name: g.num_units for g in get_adapter(dense_skeleton(model)).structure_groups()}
        except Exception:  # noqa: BLE001
            skeleton_groups = {}
        original = meta.get("dense_widths") or {}
        for g in adapter.structure_groups():
            dense_units = original.get(g.name, skeleton_groups.get(g.name))
            structures.append({"name": g.name, "kind": g.kind, "units": g.num_units, "dense_units": dense_units})
    return SparsityReport(
        model_class=type(model).__name__,
        layers=stats,
        total_params=total,
        zero_params=zero,
        macs=macs,
        structures=structures,
        dense_params=dense_params,
        macs_unavailable=unavailable,
    )
