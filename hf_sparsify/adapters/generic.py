"""The adapter for architectures hf_sparsify does not know: layers are chosen with ``targets=`` regexes only."""

from __future__ import annotations

from .base import ModelAdapter, PrunableLayer, UnsupportedModelError, supported_model_types


class GenericAdapter(ModelAdapter):
    """Selects ``nn.Linear`` / ``nn.Conv2d`` modules by name. It knows no structures, so structured methods and the
    adapter's default targets are unavailable; unstructured methods work with ``targets=``."""

    family = "generic"

    def _known_layers(self) -> list[PrunableLayer]:
        return []

    def prunable_layers(self) -> list[PrunableLayer]:
        raise UnsupportedModelError(
            f"hf_sparsify has no adapter for {type(self.model).__name__} "
            f"(model_type={getattr(getattr(self.model, 'config', None), 'model_type', None)!r}). "
            f"Supported model types: {', '.join(supported_model_types())}. "
            "To prune it anyway, name the layers with targets= regexes searched in module names, e.g. "
            "MagnitudeConfig(sparsity=0.5, targets=[r'\\.mlp\\.fc\\d$', r'attention\\.\\w_proj$']) "
            "or on the CLI --config with a \"targets\" list."
        )
