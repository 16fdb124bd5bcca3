"""What an adapter knows about a model family: its prunable weights and its prunable structures.

Methods never hard-code module names; they ask the adapter:

* :meth:`ModelAdapter.prunable_layers` lists the ``nn.Linear`` / ``nn.Conv2d`` weights that unstructured methods
  prune (attention projections, MLP layers, ConvNeXt pointwise and downsampling convs) with their role.
* :meth:`ModelAdapter.structure_groups` lists the structures that structured methods remove (MLP hidden neurons,
  attention heads, ConvNeXt block hidden channels), each with every tensor it owns.
* :meth:`ModelAdapter.width_config_fields` says which fields of the model's transformers config hold those widths,
  so that a structurally pruned model records them where transformers reads them.

Module *names* are stored, not module objects, because structured surgery replaces modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import HfSparsifyError

__all__ = [
    "ADAPTERS",
    "register_adapter",
    "supported_model_types",
    "PrunableLayer",
    "StructureGroup",
    "ModelAdapter",
    "UnsupportedModelError",
    "PRUNABLE_MODULE_TYPES",
    "MLP_NEURON",
    "ATTENTION_HEAD",
    "CONV_CHANNEL",
]

PRUNABLE_MODULE_TYPES = (nn.Linear, nn.Conv2d)

MLP_NEURON = "mlp_neuron"
ATTENTION_HEAD = "attention_head"
CONV_CHANNEL = "conv_channel"


class UnsupportedModelError(HfSparsifyError, ValueError):
    """The model's architecture has no adapter, or its modules are not where the adapter expects them."""


@dataclass
class PrunableLayer:
    """A weight that unstructured methods may prune.

    Attributes:
        name: the module's path in the model, e.g. ``"vit.layers.3.mlp.fc1"``.
        module: the ``nn.Linear`` or ``nn.Conv2d``.
        role: what the layer is, e.g. ``"attention.query"``, ``"mlp.fc1"``, ``"mlp.gate"``, ``"downsample"``,
            or ``"custom"`` for layers selected by ``targets=`` regexes.
        block: the name of the enclosing block (``"vit.layers.3"``), used to group reports; ``None`` if none.
        block_index: the index of that block among the model's blocks.
    """

    name: str
    module: nn.Module
    role: str = "custom"
    block: str | None = None
    block_index: int | None = None

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


@dataclass
class StructureGroup:
    """A set of same-kind prunable units that share tensors: the hidden neurons of one MLP, the heads of one
    attention, the hidden channels of one ConvNeXt block.

    Removing unit ``u`` removes rows ``u*unit_size : (u+1)*unit_size`` of every producer's weight (and bias),
    the same columns of every consumer's weight, and the same entries of every extra parameter. A *fused*
    producer holds several equal sections of rows, each indexed by the units (timm's ``qkv``: the query, key and
    value rows one after the other, so a head owns three row ranges that are not contiguous; a packed SwiGLU
    ``fc1``: gate and value halves); ``producer_sections`` gives their number and :meth:`producer_rows` the rows.
    Producers and consumers are ``nn.Linear`` or 1×1 ``nn.Conv2d`` (timm's ConvNeXt with ``conv_mlp``): rows are
    output channels, columns input channels.

    Attributes:
        name: the owning module's path (``"vit.layers.3.mlp"``, ``"vit.layers.3.attention"``).
        kind: :data:`MLP_NEURON`, :data:`ATTENTION_HEAD` or :data:`CONV_CHANNEL`.
        block: the enclosing block's name; ``block_index`` its index.
        producers: modules whose output rows are the units (``fc1``; ``gate_proj`` and ``up_proj``; ``q,k,v``).
        consumers: modules whose input columns are the units (``fc2``; ``down_proj``; ``o_proj``).
        unit_size: rows per unit (1 for a neuron, ``head_dim`` for a head).
        extra_params: ``(parameter_name, dim)`` of further tensors indexed by unit (ConvNeXtV2's GRN).
        observe: the module whose *input* carries the units' output values (VBP hooks it); for an MLP this is the
            consumer: ``fc2``'s input is ``act(fc1(x))``; for heads ``o_proj``, whose input is the heads' outputs.
        layer_scale: the LayerScale parameter applied after the consumer, if any (the bias fold stays exact).
        count_attribute: the attribute of the owner module holding the unit count (``num_attention_heads``),
            updated when units are removed; ``None`` if the count is read from the shapes.
        size_attributes: further attributes of the owner module that hold ``units × factor`` (timm's
            ``attn_dim`` = heads × head_dim), as ``{attribute: factor}``; updated with the count.
        producer_sections: ``{producer name: sections}`` for fused producers (timm's ``qkv``: 3); others hold 1.
        blocks_exact_fold: a reason the mean-fold of removed units is not exact here (ConvNeXtV2's GRN), or None.
    """

    name: str
    kind: str
    block: str
    block_index: int
    producers: list[str]
    consumers: list[str]
    num_units: int
    unit_size: int = 1
    extra_params: list[tuple[str, int]] = field(default_factory=list)
    observe: str | None = None
    layer_scale: str | None = None
    count_attribute: str | None = None
    blocks_exact_fold: str | None = None
    size_attributes: dict[str, int] = field(default_factory=dict)
    producer_sections: dict[str, int] = field(default_factory=dict)

    def unit_rows(self, units: torch.Tensor) -> torch.Tensor:
        """Row (or column) indices of the given units in a tensor of ``num_units × unit_size`` rows: a plain
        producer's output rows, a consumer's input columns, an extra parameter's entries."""
        units = torch.as_tensor(units, dtype=torch.long)
        offsets = torch.arange(self.unit_size, dtype=torch.long)
        return (units[:, None] * self.unit_size + offsets[None, :]).reshape(-1)

    def sections(self, producer: str) -> int:
        """How many sections of ``num_units × unit_size`` rows the producer ``producer`` holds (1 unless fused)."""
        return int(self.producer_sections.get(producer, 1))

    def rows_per_unit(self, producer: str) -> int:
        """How many output rows of ``producer`` one unit owns (``unit_size`` times its sections)."""
        return self.unit_size * self.sections(producer)

    def producer_rows(self, producer: str, units: torch.Tensor) -> torch.Tensor:
        """The output rows of ``producer`` that the given units own, section by section (for timm's fused ``qkv``
        and head ``h``: its query rows, then its key rows, then its value rows)."""
        rows = self.unit_rows(units)
        width = self.num_units * self.unit_size
        return torch.cat([rows + s * width for s in range(self.sections(producer))])


class ModelAdapter:
    """Base of the per-family adapters. Subclasses set ``family``, ``model_types`` and implement :meth:`blocks`,
    :meth:`prunable_layers` and :meth:`structure_groups` (and :meth:`width_config_fields` where the family's config
    has width fields); the generic adapter serves ``targets=`` regexes on any model.

    Args:
        model: a transformers model of the family (classification head or bare backbone).
    """

    family: str = "generic"
    model_types: tuple[str, ...] = ()
    #: human-readable description for the support table / error messages
    description: str = ""

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether this adapter serves ``model``, whose ``config.model_type`` is one of :attr:`model_types`. One
        model type may hold several architectures (``timm_wrapper`` wraps any timm model): the adapter of each
        says which it knows. Default: every model of its types."""
        return True

    # -- to implement -----------------------------------------------------------------------------------
    def prunable_layers(self) -> list[PrunableLayer]:
        """The weights unstructured methods prune by default, in model order, with their roles."""
        raise NotImplementedError

    def structure_groups(self, kinds: Iterable[str] | None = None) -> list[StructureGroup]:
        """The model's structure groups of the given kinds (default: every kind the family has), in model order;
        structured methods select among them with :func:`hf_sparsify.structured.select_groups`."""
        return []

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The model's repeated blocks (transformer layers, ConvNeXt layers) as ``(name, module)``."""
        return []

    def head_tokens(self) -> slice | None:
        """The tokens of the last block's output that the model's output depends on, when it reads only some of
        them (a ViT classifier reads the CLS token); ``None`` when every token or position reaches the output
        (bare backbones, ConvNeXt's pooling, DINOv2's CLS + patch-mean head). VBP's last-block compensation uses it."""
        return None

    def width_config_fields(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """Where the model's config records its current structure widths, as transformers reads them.

        Returns ``(fields, per_layer)``: ``fields`` are config attributes to set because every block has the
        same width (``{"intermediate_size": 96}``, ``{"num_attention_heads": 2, "head_dim": 8}``), and
        ``per_layer`` maps a block index to the transformers-native per-layer overrides of the blocks that differ
        from the config (``{0: {"intermediate_size": 32}}``). Widths that no config field can express (ConvNeXt
        channels) are left out: the shape record of :mod:`hf_sparsify.surgery.shapes` carries them. The base
        adapter knows no such field.
        """
        return {}, {}

    def image_input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image the model takes at its configured size (MAC counts run one
        zero image of this shape): the config's ``num_channels`` and ``image_size``, 3 × 224 × 224 without them."""
        config = getattr(self.model, "config", None)
        size = getattr(config, "image_size", None) or 224
        if isinstance(size, (list, tuple)):
            height, width = int(size[0]), int(size[-1])
        elif isinstance(size, dict):
            height, width = int(size.get("height", 224)), int(size.get("width", 224))
        else:
            height = width = int(size)
        return int(getattr(config, "num_channels", None) or 3), height, width

    def distillation_outputs(self) -> tuple[str, str] | None:
        """``(class-token logits key, distillation-token logits key)`` of the model's output when it has a second
        head trained from a teacher (DeiT with teacher: ``("cls_logits", "distillation_logits")``), else ``None``.
        ``SparseTrainer`` sends the label loss to the first and the teacher term to the second."""
        return None

    # -- shared helpers -----------------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module:
        """The module at ``name`` (a path in the model)."""
        return self.model.get_submodule(name)

    def module_name(self, module: nn.Module) -> str:
        """The path of ``module`` in the model."""
        for name, mod in self.model.named_modules():
            if mod is module:
                return name
        raise KeyError("module is not part of this model")

    def select_layers(self, targets: list[str] | None = None, ignore: list[str] | None = None) -> list[PrunableLayer]:
        """The layers a method prunes: the adapter's defaults, or every Linear/Conv2d whose name matches one of
        ``targets`` (``re.search``); minus those matching ``ignore``."""
        if targets is None:
            layers = self.prunable_layers()
        else:
            known = {layer.name: layer for layer in self._known_layers()}
            layers = []
            for name, module in self.model.named_modules():
                if isinstance(module, PRUNABLE_MODULE_TYPES) and any(re.search(p, name) for p in targets):
                    layers.append(known.get(name) or PrunableLayer(name=name, module=module))
            if not layers:
                raise UnsupportedModelError(
                    f"targets={targets} matched no nn.Linear or nn.Conv2d in {type(self.model).__name__}. "
                    f"Some module names: {', '.join(self._example_names())}."
                )
        if ignore:
            layers = [layer for layer in layers if not any(re.search(p, layer.name) for p in ignore)]
            if not layers:
                raise UnsupportedModelError(f"ignore={ignore} removed every targeted layer: nothing is left to prune.")
        return layers

    def _known_layers(self) -> list[PrunableLayer]:
        """The adapter's own layers, whose roles are kept when ``targets=`` selects them."""
        return self.prunable_layers()

    def _example_names(self, limit: int = 8) -> list[str]:
        names = [n for n, m in self.model.named_modules() if isinstance(m, PRUNABLE_MODULE_TYPES)]
        return names[:limit]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, model={type(self.model).__name__})"


#: the adapters of the known families, in the order they are tried (filled by :func:`register_adapter`)
ADAPTERS: list[type[ModelAdapter]] = []


def register_adapter(adapter_class: type[ModelAdapter]) -> type[ModelAdapter]:
    """Add an adapter for more model types (a class decorator, as the built-in adapters use it)."""
    if adapter_class not in ADAPTERS:
        ADAPTERS.append(adapter_class)
    return adapter_class


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values that have an adapter."""
    return [t for adapter in ADAPTERS for t in adapter.model_types]
