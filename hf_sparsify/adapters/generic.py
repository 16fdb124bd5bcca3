"""The adapter for architectures hf_sparsify does not know: layers are chosen with ``targets=`` regexes only."""

from __future__ import annotations

from torch import nn

from .base import ModelAdapter, PrunableLayer, UnsupportedModelError, supported_model_types

__all__ = ["GenericAdapter", "describe_model"]


def describe_model(model: nn.Module) -> str:
    """``"ViTModel (model_type='vit')"``; a wrapped timm model also names its timm architecture and class."""
    config = getattr(model, "config", None)
    text = f"{type(model).__name__} (model_type={getattr(config, 'model_type', None)!r}"
    architecture = getattr(config, "architecture", None)
    timm_model = getattr(model, "timm_model", None)
    if architecture is not None and isinstance(timm_model, nn.Module):
        text += f", timm architecture {architecture!r}: a {type(timm_model).__name__}"
    return text + ")"


class GenericAdapter(ModelAdapter):
    """Selects ``nn.Linear`` / ``nn.Conv2d`` modules by name. It knows no structures, so structured methods and the
    adapter's default targets are unavailable; unstructured methods work with ``targets=``."""

    family = "generic"

    def _known_layers(self) -> list[PrunableLayer]:
        return []

    def prunable_layers(self) -> list[PrunableLayer]:
        raise UnsupportedModelError(
            f"hf_sparsify has no adapter for {describe_model(self.model)}. "
            f"Supported model types: {', '.join(dict.fromkeys(supported_model_types()))} (timm_wrapper: timm's "
            "VisionTransformer and ConvNeXt). "
            "To prune it anyway, name the layers with targets= regexes searched in module names, e.g. "
            "MagnitudeConfig(sparsity=0.5, targets=[r'\\.mlp\\.fc\\d$', r'attention\\.\\w_proj$']) "
            "or on the CLI --config with a \"targets\" list."
        )
