"""Adapters for ConvNeXt and ConvNeXtV2.

A ConvNeXt block is ``dwconv → LayerNorm → pwconv1 (Linear) → GELU → [GRN in V2] → pwconv2 (Linear) →
[LayerScale in V1]``, plus a residual. Prunable weights: ``pwconv1``, ``pwconv2`` and the stages' downsampling
convs (``downsampling_layer.1``); the depthwise conv, stem, norms and head stay dense, as in the CAP recipes.
Structures: the block's hidden channels (``pwconv1`` rows and bias, ``pwconv2`` columns, GRN entries).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from .base import CONV_CHANNEL, MLP_NEURON, ModelAdapter, PrunableLayer, StructureGroup, UnsupportedModelError, register_adapter


@register_adapter
class ConvNextAdapter(ModelAdapter):
    """ConvNeXt (``ConvNextModel``, ``ConvNextForImageClassification``): prunable ``pwconv1``/``pwconv2`` and the
    stages' downsampling convs; structures are the blocks' hidden channels (``pwconv1`` rows, ``pwconv2`` columns),
    with LayerScale after ``pwconv2``. No config field holds the channel counts: the shape record does."""

    family = "convnext"
    model_types = ("convnext",)
    description = "ConvNeXt: ConvNextModel, ConvNextForImageClassification"
    grn: str | None = None
    layer_scale: str | None = "layer_scale_parameter"
    #: where the stages are (relative to the base model), and the names inside a stage and a block
    stages_path: str = "encoder.stages"
    downsampling: str = "downsampling_layer"
    pointwise1: str = "pwconv1"
    pointwise2: str = "pwconv2"
    #: whether the first stage's downsampling conv is the stem (which stays dense)
    stem_in_first_stage: bool = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base = getattr(model, "base_model", model)
        self._prefix = next((name + "." for name, child in model.named_children() if child is base), "")
        try:
            self._stages = model.get_submodule(self._prefix + self.stages_path)
        except AttributeError:
            raise UnsupportedModelError(
                f"The {self.family} adapter found no {self.stages_path!r} in {type(model).__name__}; prune it with targets= regexes, "
                f"e.g. MagnitudeConfig(sparsity=0.5, targets=[r'{self.pointwise1[:-1]}\\d$'])."
            ) from None
        for _, block in self.blocks()[:1]:
            for rel in (self.pointwise1, self.pointwise2):
                if not isinstance(getattr(block, rel, None), nn.Linear):
                    raise UnsupportedModelError(
                        f"The {self.family} adapter expected {rel} to be nn.Linear in {type(block).__name__}; "
                        "prune this model with targets= regexes."
                    )

    def blocks(self) -> list[tuple[str, nn.Module]]:
        out = []
        for s, stage in enumerate(self._stages):
            for j, block in enumerate(stage.layers):
                out.append((f"{self._prefix}{self.stages_path}.{s}.layers.{j}", block))
        return out

    def downsampling_layers(self) -> list[tuple[str, nn.Module, int]]:
        """``(name, conv, stage index)`` of every stage's downsampling conv (not the stem)."""
        out = []
        for s, stage in enumerate(self._stages):
            if s == 0 and self.stem_in_first_stage:
                continue
            for k, module in enumerate(getattr(stage, self.downsampling)):
                if isinstance(module, nn.Conv2d):
                    out.append((f"{self._prefix}{self.stages_path}.{s}.{self.downsampling}.{k}", module, s))
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        layers = []
        blocks = self.blocks()
        first_block_of_stage = {}
        for index, (name, _) in enumerate(blocks):
            first_block_of_stage.setdefault(name.split(".layers.")[0], index)
        downsample = {name.split(f".{self.downsampling}.")[0]: (name, module) for name, module, _ in self.downsampling_layers()}
        for index, (name, block) in enumerate(blocks):
            stage = name.split(".layers.")[0]
            if first_block_of_stage[stage] == index and stage in downsample:
                ds_name, ds_module = downsample[stage]
                layers.append(PrunableLayer(name=ds_name, module=ds_module, role="downsample", block=stage, block_index=None))
            for rel, role in ((self.pointwise1, "mlp.fc1"), (self.pointwise2, "mlp.fc2")):
                layers.append(PrunableLayer(name=f"{name}.{rel}", module=getattr(block, rel), role=role, block=name, block_index=index))
        return layers

    def structure_groups(self, kinds: Iterable[str] | None = None) -> list[StructureGroup]:
        kinds = set(kinds) if kinds is not None else {CONV_CHANNEL}
        if not kinds & {CONV_CHANNEL, MLP_NEURON}:
            return []
        groups = []
        for index, (name, block) in enumerate(self.blocks()):
            has_scale = self.layer_scale and getattr(block, self.layer_scale, None) is not None
            groups.append(
                StructureGroup(
                    name=name,
                    kind=CONV_CHANNEL,
                    block=name,
                    block_index=index,
                    producers=[f"{name}.{self.pointwise1}"],
                    consumers=[f"{name}.{self.pointwise2}"],
                    num_units=getattr(block, self.pointwise1).out_features,
                    extra_params=[(f"{name}.{self.grn}.weight", -1), (f"{name}.{self.grn}.bias", -1)] if self.grn else [],
                    observe=f"{name}.{self.pointwise2}",
                    layer_scale=f"{name}.{self.layer_scale}" if has_scale else None,
                    blocks_exact_fold=(
                        "ConvNeXtV2's GRN normalises the hidden channels across space between GELU and pwconv2, so a "
                        "removed channel's mean cannot be folded into pwconv2's bias exactly"
                    )
                    if self.grn
                    else None,
                )
            )
        return groups


@register_adapter
class ConvNextV2Adapter(ConvNextAdapter):
    """ConvNeXtV2 (``ConvNextV2Model``, ``ConvNextV2ForImageClassification``): as ConvNeXt, without LayerScale and
    with GRN between GELU and ``pwconv2``, whose entries belong to the hidden channels too (and which makes a
    mean-fold of removed channels inexact)."""

    family = "convnextv2"
    model_types = ("convnextv2",)
    description = "ConvNeXtV2: ConvNextV2Model, ConvNextV2ForImageClassification (GRN)"
    grn = "grn"
    layer_scale = None
