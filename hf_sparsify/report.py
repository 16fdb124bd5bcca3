"""``sparsity_report(model)``: per-layer and global sparsity, parameter counts, MACs per image.

```python
>>> import hf_sparsify
>>> report = hf_sparsify.sparsity_report(pruned)
>>> print(report)                      # a table
>>> report.to_dict()["global"]["sparsity"]
0.5
>>> report.to_json()                   # the same as JSON
```

MACs are counted by running one image through the model with hooks on every ``nn.Linear`` / ``nn.Conv2d``
(attention score and value products are added for the adapter's attention modules):

* ``dense``: the model its config describes before any structured pruning, on the meta device;
* ``pruned``: the current shapes (physically smaller after structured pruning);
* ``effective``: the current shapes counting only non-zero weights (what a sparse kernel could skip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import PRUNABLE_MODULE_TYPES, get_adapter
from .surgery.shapes import METADATA_KEY, dense_skeleton

__all__ = ["SparsityReport", "LayerStats", "sparsity_report", "count_macs"]


@dataclass
class LayerStats:
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

        lines.append(
            f"MACs per image: dense {fmt(self.macs.get('dense'))}, pruned shapes {fmt(self.macs.get('pruned'))}, "
            f"non-zero weights only {fmt(self.macs.get('effective'))}."
        )
        return "\n".join(lines)


def _image_input(model: nn.Module, device, dtype) -> torch.Tensor:
    config = model.config
    size = getattr(config, "image_size", None) or 224
    if isinstance(size, (list, tuple)):
        h, w = size[0], size[-1]
    elif isinstance(size, dict):
        h, w = size.get("height", 224), size.get("width", 224)
    else:
        h = w = int(size)
    channels = getattr(config, "num_channels", 3)
    return torch.zeros(1, channels, h, w, device=device, dtype=dtype)


@torch.no_grad()
def count_macs(model: nn.Module, attention_modules: list[str] | None = None) -> dict[str, Any]:
    """MACs per image of ``model`` (one forward of a zero image; works on the meta device).

    Returns ``{"total": int, "effective": int, "per_module": {name: macs}}``; ``effective`` counts only non-zero
    weights of Linear/Conv2d layers (it equals ``total`` on the meta device).
    """
    per_module: dict[str, int] = {}
    effective = 0
    handles = []
    is_meta = next(model.parameters()).device.type == "meta"

    def linear_hook(name):
        def hook(module, inputs, output):
            nonlocal effective
            if isinstance(module, nn.Linear):
                positions = output.shape[:-1].numel()  # also right for a fully pruned layer (0 outputs)
            else:
                positions = output.shape[-1] * output.shape[-2] * output.shape[0]
            weight = module.weight
            macs = positions * weight.numel()
            per_module[name] = per_module.get(name, 0) + macs
            nnz = weight.numel() if is_meta else int(torch.count_nonzero(weight))
            effective += positions * nnz

        return hook

    def attention_hook(name):
        def hook(module, inputs, output):
            # q·kᵀ and attn·v: 2 · tokens² · (heads·head_dim), with tokens and width read off the query projection.
            q = output
            tokens = q.shape[-2] if q.dim() == 3 else q.shape[1]
            per_module[name + ".scores"] = per_module.get(name + ".scores", 0) + 2 * tokens * tokens * q.shape[-1]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULE_TYPES):
            handles.append(module.register_forward_hook(linear_hook(name)))
    for name in attention_modules or []:
        handles.append(model.get_submodule(name).register_forward_hook(attention_hook(name)))
    param = next(model.parameters())
    try:
        was_training = model.training
        model.eval()
        model(pixel_values=_image_input(model, param.device, param.dtype))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    total = sum(per_module.values())
    attention_total = sum(v for k, v in per_module.items() if k.endswith(".scores"))
    return {"total": total, "effective": effective + attention_total, "per_module": per_module}


def _query_modules(adapter) -> list[str]:
    from .adapters import ATTENTION_HEAD

    if adapter.family == "generic":
        return []
    return [g.producers[0] for g in adapter.structure_groups([ATTENTION_HEAD])]


def sparsity_report(model: nn.Module, *, compute_macs: bool = True) -> SparsityReport:
    """Per-layer and global sparsity of ``model``'s prunable layers, parameter counts, and MACs per image for the
    dense and the pruned shapes. Models without an adapter report every ``nn.Linear``/``nn.Conv2d``."""
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
    if compute_macs:
        queries = _query_modules(adapter)
        current = count_macs(model, queries)
        macs["pruned"], macs["effective"] = current["total"], current["effective"]
        for s in stats:
            s.macs = current["per_module"].get(s.name)
            if s.macs is not None and s.numel:
                s.effective_macs = round(s.macs * (1 - s.sparsity))
        if macs["dense"] is None or dense_params is None:
            try:
                skeleton = dense_skeleton(model)
                if macs["dense"] is None:
                    macs["dense"] = count_macs(skeleton, queries)["total"]
                if dense_params is None:
                    dense_params = sum(p.numel() for p in skeleton.parameters())
            except Exception:  # noqa: BLE001 - models that cannot run on the meta device
                macs["dense"] = macs["dense"] or None

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
    )
