"""Adapters for DINOv3: the ViT backbone (``DINOv3ViTModel``) and the ConvNeXt backbone (``DINOv3ConvNextModel``).

transformers 5.x has no classification class for either: they are backbones, pruned label-free (CAP's
``loss="features"``, VBP's activation statistics).

**ViT** (``facebook/dinov3-vit*``): a block is ``norm1 → attention (q/k/v/o_proj, RoPE on the patch tokens) →
layer_scale1 → norm2 → mlp → layer_scale2``; the MLP is ``up_proj → act → down_proj``, or gated
(``use_gated_mlp``: ``act(gate_proj) · up_proj → down_proj``). The CLS and register tokens are prepended and carry no
RoPE. Prunable: the four attention projections and the MLP's layers. Structures: MLP neurons (``up_proj`` rows, with
``gate_proj`` rows when gated, ``down_proj`` columns) and heads (``head_dim`` rows of q, k, v, columns of o_proj;
the attention's ``num_heads`` is updated). Removing whole heads keeps ``head_dim``, so RoPE is unchanged.

Widths in the config: ``intermediate_size`` (one MLP width) is a config field; the head count is not expressible,
since the config derives ``head_dim = hidden_size // num_attention_heads`` (in the attention and in RoPE). Pruned
heads are therefore written as transformers' ``per_layer_config`` for every block, which plain transformers refuses
loudly (``AmbiguousGlobalPerLayerAttributeError``), and the shape record rebuilds them
(``AutoSparseModel.from_pretrained``).

**ConvNeXt** (``facebook/dinov3-convnext-*``): as transformers' ConvNeXt, with other module names
(``model.stages.{s}.layers.{j}.{depthwise_conv, pointwise_conv1, pointwise_conv2, gamma}``; the stem is the first
stage's ``downsample_layers.0`` and stays dense).
"""

from __future__ import annotations

from typing import Any

from .base import ATTENTION_HEAD, MLP_NEURON, register_adapter
from .convnext import ConvNextAdapter
from .transformer import TransformerAdapter, TransformerSpec

__all__ = ["DINOv3ViTAdapter", "DINOv3ConvNextAdapter"]


@register_adapter
class DINOv3ViTAdapter(TransformerAdapter):
    """DINOv3 ViT (``DINOv3ViTModel``, ``DINOv3ViTBackbone``): attention ``q/k/v/o_proj`` (with RoPE), plain
    (``up_proj``/``down_proj``) or gated (``gate_proj``/``up_proj``/``down_proj``) MLP, LayerScale after both,
    register tokens. Head counts are recorded per layer (see the module docstring)."""

    family = "dinov3_vit"
    model_types = ("dinov3_vit",)
    description = "DINOv3 ViT (plain or gated MLP, register tokens, RoPE): DINOv3ViTModel"
    spec = TransformerSpec(
        layers="layer",
        heads_attribute="num_heads",
        fc1="mlp.up_proj",
        fc2="mlp.down_proj",
        layer_scale="layer_scale2.lambda1",
        attention_layer_scale="layer_scale1.lambda1",
    )

    def width_config_fields(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """``intermediate_size`` where every MLP has the same width (per-layer overrides otherwise); heads as
        per-layer ``num_attention_heads`` for every block whose count differs from the config's, since the config
        has no ``head_dim`` field and derives it from the head count."""
        config = self.model.config
        fields: dict[str, Any] = {}
        per_layer: dict[int, dict[str, Any]] = {}
        for group in self.structure_groups([ATTENTION_HEAD]):
            if group.num_units != config.num_attention_heads:
                per_layer.setdefault(group.block_index, {})["num_attention_heads"] = group.num_units
        mlps = self.structure_groups([MLP_NEURON])
        self._mlp_width_fields([(g.block_index, g.num_units) for g in mlps], fields, per_layer)
        return fields, per_layer


@register_adapter
class DINOv3ConvNextAdapter(ConvNextAdapter):
    """DINOv3 ConvNeXt (``DINOv3ConvNextModel``, ``DINOv3ConvNextBackbone``): prunable ``pointwise_conv1``/``2`` and
    the downsampling convs of stages 2–4; structures are the blocks' hidden channels, with LayerScale ``gamma``
    after ``pointwise_conv2``. No config field holds the channel counts: the shape record does."""

    family = "dinov3_convnext"
    model_types = ("dinov3_convnext",)
    description = "DINOv3 ConvNeXt: DINOv3ConvNextModel"
    layer_scale = "gamma"
    stages_path = "stages"
    downsampling = "downsample_layers"
    pointwise1 = "pointwise_conv1"
    pointwise2 = "pointwise_conv2"
    stem_in_first_stage = True
