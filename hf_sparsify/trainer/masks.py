"""Fixed sparsity masks kept through training.

:class:`MaskState` holds one keep-mask (``True`` = kept) per pruned layer and keeps the pruned weights exactly zero
while an optimizer trains the model:

* a gradient hook on every masked weight zeroes the gradients of pruned entries, so gradient clipping measures the
  live weights only and optimizer moments of pruned entries stay zero (it runs before DDP's all-reduce and with
  ``torch.compile``, and on every micro-batch of gradient accumulation);
* :meth:`MaskState.apply` multiplies the weights by their masks; :class:`~hf_sparsify.SparseTrainer` calls it after
  every optimizer step, which also removes what decoupled weight decay or a mixed-precision step could have moved.

```python
>>> from hf_sparsify.trainer import MaskState
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.7))
>>> masks = MaskState.from_weights(pruned)       # masks read off the zeros of the prunable layers
>>> masks.attach_gradient_hooks()
>>> optimizer = torch.optim.AdamW(pruned.parameters(), lr=1e-3, weight_decay=0.05)
>>> pruned(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
>>> optimizer.step(); masks.apply()              # weight decay moved the zeros; apply() restores them
>>> round(masks.sparsity()["global"], 3)
0.7
```
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import nn

from ..adapters import get_adapter

__all__ = ["MaskState", "MASKS_NAME"]

MASKS_NAME = "sparsity_masks.safetensors"


def _select_layer_names(model: nn.Module, config=None) -> list[str]:
    """Names of the layers a pruning configuration targets (the adapter's prunable layers by default)."""
    targets = getattr(config, "targets", None)
    ignore = getattr(config, "ignore", None)
    adapter = get_adapter(model, allow_generic=True)
    if adapter.family == "generic" and targets is None:
        targets = [r".*"]
    return [layer.name for layer in adapter.select_layers(targets, ignore)]


class MaskState:
    """Keep-masks of pruned layers, by module name, and the machinery that keeps them through training.

    Args:
        model: the model whose ``<name>.weight`` the masks cover (the unwrapped model, not DDP's wrapper).
        masks: ``{module name: bool tensor shaped like its weight}``.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._hooks_enabled = False
        for name, mask in masks.items():
            weight = self._weight(name)
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(
                    f"the mask of {name} has shape {tuple(mask.shape)} but the weight has {tuple(weight.shape)}: the masks "
                    "come from another model or the model's shapes changed."
                )
            self.masks[name] = mask.to(device=weight.device, dtype=torch.bool)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_weights(cls, model: nn.Module, layer_names: Iterable[str] | None = None, *, config=None, skip_dense: bool = True) -> "MaskState":
        """Masks read off the weights (``weight != 0``) of ``layer_names`` (default: the layers ``config`` targets,
        or the adapter's prunable layers). With ``skip_dense``, layers without any zero get no mask."""
        names = list(layer_names) if layer_names is not None else _select_layer_names(model, config)
        masks = {}
        for name in names:
            weight = model.get_submodule(name).weight.detach()
            mask = weight != 0
            if skip_dense and bool(mask.all()):
                continue
            masks[name] = mask
        return cls(model, masks)

    def _weight(self, name: str) -> nn.Parameter:
        try:
            return self.model.get_submodule(name).weight
        except AttributeError:
            raise ValueError(f"the model has no layer {name!r} with a weight; the masks come from another model.") from None

    def __len__(self) -> int:
        return len(self.masks)

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    # ------------------------------------------------------------------------------------------ keeping
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned entries of every masked weight, in place."""
        for name, mask in self.masks.items():
            weight = self._weight(name)
            if mask.device != weight.device:
                mask = self.masks[name] = mask.to(weight.device)
            weight.mul_(mask)

    def _gradient_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = self.masks[name]
            if mask.device != grad.device:
                mask = mask.to(grad.device)
            return grad * mask

        return hook

    def attach_gradient_hooks(self) -> None:
        """Zero the gradients of pruned entries as they are computed (idempotent; layers masked later by
        :meth:`update_from_weights` get their hook then)."""
        self.detach_gradient_hooks()
        self._hooks_enabled = True
        for name in self.masks:
            self._hooks.append(self._weight(name).register_hook(self._gradient_hook(name)))

    def detach_gradient_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._hooks_enabled = False

    @torch.no_grad()
    def update_from_weights(self, layer_names: Iterable[str]) -> None:
        """After a pruning step: new masks from the weights' zeros, intersected with the current masks (pruning
        only removes weights), then applied. Layers not masked before get a mask."""
        for name in layer_names:
            weight = self._weight(name)
            mask = weight.detach() != 0
            if name in self.masks:
                mask &= self.masks[name].to(mask.device)
            self.masks[name] = mask
        self.apply()
        if self._hooks_enabled:
            self.attach_gradient_hooks()

    # ------------------------------------------------------------------------------------------ measuring
    @torch.no_grad()
    def sparsity(self) -> dict[str, float | dict[str, float]]:
        """Measured sparsity of the masked weights: ``{"global": s, "layers": {name: s}}`` (zeros / size)."""
        layers = {}
        zeros = total = 0
        for name in self.masks:
            weight = self._weight(name).detach()
            z = weight.numel() - int(torch.count_nonzero(weight))
            layers[name] = z / weight.numel()
            zeros += z
            total += weight.numel()
        return {"global": zeros / total if total else 0.0, "layers": layers}

    @torch.no_grad()
    def fingerprint(self) -> torch.Tensor:
        """Per layer, the number of kept entries and the sum of their flat indices (float64, exact below 2^53):
        equal fingerprints on two processes mean equal masks, up to a vanishing chance."""
        rows = []
        for name in sorted(self.masks):
            flat = self.masks[name].reshape(-1)
            idx = torch.nonzero(flat).reshape(-1).to(torch.float64)
            rows.append(torch.stack([idx.new_tensor(float(idx.numel())), idx.sum()]))
        if not rows:
            return torch.zeros(0, 2, dtype=torch.float64)
        return torch.stack(rows)

    # ------------------------------------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: mask.detach().to("cpu", torch.uint8).contiguous() for name, mask in self.masks.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the masks to a safetensors file (uint8, one tensor per layer name)."""
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(path), metadata={"format": "hf_sparsify-masks"})

    @classmethod
    def load(cls, model: nn.Module, path: str | os.PathLike) -> "MaskState":
        from safetensors.torch import load_file

        return cls(model, {name: t.bool() for name, t in load_file(str(path)).items()})
