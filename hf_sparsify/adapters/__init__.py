"""Model adapters: one declarative description per model family.

```python
>>> from hf_sparsify.adapters import get_adapter
>>> adapter = get_adapter(model)          # ViTAdapter, DeiTAdapter, Dinov2Adapter, ConvNextAdapter, DINOv3..., Timm...
>>> [layer.name for layer in adapter.prunable_layers()][:2]
['vit.layers.0.attention.q_proj', 'vit.layers.0.attention.k_proj']
```
"""

from __future__ import annotations

from torch import nn

from .base import (
    ADAPTERS,
    ATTENTION_HEAD,
    CONV_CHANNEL,
    MLP_NEURON,
    PRUNABLE_MODULE_TYPES,
    ModelAdapter,
    PrunableLayer,
    StructureGroup,
    UnsupportedModelError,
    register_adapter,
    supported_model_types,
)
from .convnext import ConvNextAdapter, ConvNextV2Adapter
from .dinov3 import DINOv3ConvNextAdapter, DINOv3ViTAdapter
from .generic import GenericAdapter
from .timm import TimmConvNeXtAdapter, TimmVisionTransformerAdapter
from .transformer import DeiTAdapter, Dinov2Adapter, TransformerAdapter, TransformerSpec, ViTAdapter

__all__ = [
    "ADAPTERS",
    "ATTENTION_HEAD",
    "CONV_CHANNEL",
    "MLP_NEURON",
    "PRUNABLE_MODULE_TYPES",
    "ConvNextAdapter",
    "ConvNextV2Adapter",
    "DINOv3ConvNextAdapter",
    "DINOv3ViTAdapter",
    "DeiTAdapter",
    "Dinov2Adapter",
    "GenericAdapter",
    "ModelAdapter",
    "PrunableLayer",
    "StructureGroup",
    "TimmConvNeXtAdapter",
    "TimmVisionTransformerAdapter",
    "TransformerAdapter",
    "TransformerSpec",
    "UnsupportedModelError",
    "ViTAdapter",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]


def get_adapter(model: nn.Module, *, allow_generic: bool = False) -> ModelAdapter:
    """The adapter of ``model``'s family, chosen by ``model.config.model_type``.

    Args:
        allow_generic: return a :class:`GenericAdapter` for unknown architectures instead of raising (it
            serves ``targets=`` regexes; asking it for default targets raises a message with an example).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types and adapter.accepts(model):
            return adapter(model)
    if allow_generic:
        return GenericAdapter(model)
    GenericAdapter(model).prunable_layers()  # raises the explanatory error
    raise AssertionError("unreachable")
