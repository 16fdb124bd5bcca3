"""Declarative adapters for ViT-style encoders: ViT, DeiT (with or without the distillation head), DINOv2
(plain MLP and SwiGLU) and DINOv2-with-registers.

The spec follows the module classes of the installed transformers (5.x): a list of blocks, each with
``attention.{q,k,v,o}_proj`` and either ``mlp.{fc1,fc2}`` or ``mlp.{gate_proj,up_proj,down_proj}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from torch import nn

from .base import ATTENTION_HEAD, MLP_NEURON, ModelAdapter, PrunableLayer, StructureGroup, UnsupportedModelError, register_adapter


@dataclass(frozen=True)
class TransformerSpec:
    """Where things live in one block of a ViT-style encoder (paths relative to the block)."""

    layers: str  # path of the ModuleList of blocks, relative to ``model.base_model``
    attention: str = "attention"
    query: str = "attention.q_proj"
    key: str = "attention.k_proj"
    value: str = "attention.v_proj"
    output: str = "attention.o_proj"
    heads_attribute: str = "num_attention_heads"
    mlp: str = "mlp"
    fc1: str = "mlp.fc1"
    fc2: str = "mlp.fc2"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    layer_scale: str | None = None  # LayerScale after the MLP, relative to the block
    attention_layer_scale: str | None = None  # LayerScale after the attention, relative to the block


class TransformerAdapter(ModelAdapter):
    """Base of the adapters of ViT-style encoders: a subclass names the family and gives a :class:`TransformerSpec`
    (where the blocks and their modules are); prunable layers and structure groups (heads, MLP neurons) follow from
    it, and the width config fields are the transformers ones (``num_attention_heads`` + ``head_dim``,
    ``intermediate_size``)."""

    spec: TransformerSpec

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._prefix = self._base_prefix()
        self._check_layout()

    # -- layout -----------------------------------------------------------------------------------------
    def _base_prefix(self) -> str:
        base = getattr(self.model, "base_model", self.model)
        if base is self.model:
            return ""
        for name, module in self.model.named_children():
            if module is base:
                return name + "."
        return ""

    def blocks(self) -> list[tuple[str, nn.Module]]:
        path = self._prefix + self.spec.layers
        try:
            layers = self.model.get_submodule(path)
        except AttributeError:
            raise UnsupportedModelError(self._layout_message(f"no module {path!r}")) from None
        return [(f"{path}.{i}", block) for i, block in enumerate(layers)]

    def _is_swiglu(self, block: nn.Module) -> bool:
        try:
            block.get_submodule(self.spec.gate)
            return True
        except AttributeError:
            return False

    def _check_layout(self) -> None:
        blocks = self.blocks()
        if not blocks:
            raise UnsupportedModelError(self._layout_message("the model has no blocks"))
        name, block = blocks[0]
        wanted = [self.spec.query, self.spec.key, self.spec.value, self.spec.output]
        wanted += [self.spec.gate, self.spec.up, self.spec.down] if self._is_swiglu(block) else [self.spec.fc1, self.spec.fc2]
        for rel in wanted:
            try:
                module = block.get_submodule(rel)
            except AttributeError:
                raise UnsupportedModelError(self._layout_message(f"no module {name}.{rel}")) from None
            if not isinstance(module, nn.Linear):
                raise UnsupportedModelError(self._layout_message(f"{name}.{rel} is a {type(module).__name__}, not nn.Linear"))

    def _layout_message(self, what: str) -> str:
        import transformers

        return (
            f"The {self.family} adapter does not recognise this {type(self.model).__name__}: {what}. "
            f"hf_sparsify follows the module names of transformers {transformers.__version__}; if your model was "
            "built by another version or custom code, prune it with targets= regexes, e.g. "
            "MagnitudeConfig(sparsity=0.5, targets=[r'\\.mlp\\.fc\\d$'])."
        )

    # -- unstructured targets -----------------------------------------------------------------------------
    def prunable_layers(self) -> list[PrunableLayer]:
        layers: list[PrunableLayer] = []
        s = self.spec
        for index, (block_name, block) in enumerate(self.blocks()):
            roles = [("attention.query", s.query), ("attention.key", s.key), ("attention.value", s.value), ("attention.output", s.output)]
            if self._is_swiglu(block):
                roles += [("mlp.gate", s.gate), ("mlp.up", s.up), ("mlp.down", s.down)]
            else:
                roles += [("mlp.fc1", s.fc1), ("mlp.fc2", s.fc2)]
            for role, rel in roles:
                layers.append(
                    PrunableLayer(name=f"{block_name}.{rel}", module=block.get_submodule(rel), role=role, block=block_name, block_index=index)
                )
        return layers

    # -- structures ---------------------------------------------------------------------------------------
    def structure_groups(self, kinds: Iterable[str] | None = None) -> list[StructureGroup]:
        kinds = set(kinds) if kinds is not None else {MLP_NEURON, ATTENTION_HEAD}
        s = self.spec
        groups: list[StructureGroup] = []
        for index, (block_name, block) in enumerate(self.blocks()):
            if ATTENTION_HEAD in kinds:
                attention = block.get_submodule(s.attention)
                head_dim = int(getattr(attention, "head_dim"))
                out_rows = block.get_submodule(s.query).out_features
                groups.append(
                    StructureGroup(
                        name=f"{block_name}.{s.attention}",
                        kind=ATTENTION_HEAD,
                        block=block_name,
                        block_index=index,
                        producers=[f"{block_name}.{s.query}", f"{block_name}.{s.key}", f"{block_name}.{s.value}"],
                        consumers=[f"{block_name}.{s.output}"],
                        num_units=out_rows // head_dim,
                        unit_size=head_dim,
                        observe=f"{block_name}.{s.output}",
                        layer_scale=f"{block_name}.{s.attention_layer_scale}" if s.attention_layer_scale else None,
                        count_attribute=s.heads_attribute,
                    )
                )
            if MLP_NEURON in kinds:
                if self._is_swiglu(block):
                    producers, consumer = [f"{block_name}.{s.gate}", f"{block_name}.{s.up}"], f"{block_name}.{s.down}"
                else:
                    producers, consumer = [f"{block_name}.{s.fc1}"], f"{block_name}.{s.fc2}"
                groups.append(
                    StructureGroup(
                        name=f"{block_name}.{s.mlp}",
                        kind=MLP_NEURON,
                        block=block_name,
                        block_index=index,
                        producers=producers,
                        consumers=[consumer],
                        num_units=self.model.get_submodule(producers[0]).out_features,
                        observe=consumer,
                        layer_scale=f"{block_name}.{s.layer_scale}" if s.layer_scale else None,
                    )
                )
        return groups

    # -- config fields of the widths ----------------------------------------------------------------------
    def width_config_fields(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """``num_attention_heads`` (with an explicit ``head_dim``) and the MLP width field: set where every block
        has the same count, per-layer overrides where the blocks differ (see :meth:`ModelAdapter.width_config_fields`)."""
        config = self.model.config
        fields: dict[str, Any] = {}
        per_layer: dict[int, dict[str, Any]] = {}
        heads = self.structure_groups([ATTENTION_HEAD])
        counts = [g.num_units for g in heads]
        current = config.num_attention_heads
        if len(set(counts)) == 1:
            if counts[0] != current:
                fields.update(head_dim=heads[0].unit_size, num_attention_heads=counts[0])
        elif counts:
            fields["head_dim"] = heads[0].unit_size
            for group, count in zip(heads, counts):
                if count != current:
                    per_layer.setdefault(group.block_index, {})["num_attention_heads"] = count
        mlps = self.structure_groups([MLP_NEURON])
        self._mlp_width_fields([(g.block_index, g.num_units) for g in mlps], fields, per_layer)
        return fields, per_layer

    def _mlp_width_fields(self, widths: list[tuple[int, int]], fields: dict[str, Any], per_layer: dict[int, dict[str, Any]]) -> None:
        """``intermediate_size``: the common width, or per-layer overrides of the blocks that differ."""
        config = self.model.config
        values = [w for _, w in widths]
        if len(set(values)) == 1:
            fields["intermediate_size"] = values[0]
        else:
            for block_index, width in widths:
                if width != config.intermediate_size:
                    per_layer.setdefault(block_index, {})["intermediate_size"] = width


@register_adapter
class ViTAdapter(TransformerAdapter):
    """ViT (``ViTModel``, ``ViTForImageClassification``): attention projections and ``mlp.fc1``/``fc2``; the
    classifier reads the CLS token."""

    family = "vit"
    model_types = ("vit",)
    description = "ViT: ViTModel, ViTForImageClassification"
    spec = TransformerSpec(layers="layers")

    def head_tokens(self) -> slice | None:
        from transformers import ViTForImageClassification

        return slice(0, 1) if isinstance(self.model, ViTForImageClassification) else None  # the classifier reads CLS


@register_adapter
class DeiTAdapter(TransformerAdapter):
    """DeiT (``DeiTModel``, ``DeiTForImageClassification``, ``…WithTeacher``): as ViT; the model with teacher has a
    second (distillation) head reading the distillation token."""

    family = "deit"
    model_types = ("deit",)
    description = "DeiT: DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher"
    spec = TransformerSpec(layers="layers")

    def head_tokens(self) -> slice | None:
        from transformers import DeiTForImageClassification, DeiTForImageClassificationWithTeacher

        if isinstance(self.model, DeiTForImageClassificationWithTeacher):
            return slice(0, 2)  # CLS and distillation tokens, one head each
        return slice(0, 1) if isinstance(self.model, DeiTForImageClassification) else None

    def distillation_outputs(self) -> tuple[str, str] | None:
        from transformers import DeiTForImageClassificationWithTeacher

        return ("cls_logits", "distillation_logits") if isinstance(self.model, DeiTForImageClassificationWithTeacher) else None


@register_adapter
class Dinov2Adapter(TransformerAdapter):
    """DINOv2 with or without registers (``Dinov2Model``, ``Dinov2ForImageClassification``, and the ``…WithRegisters``
    classes): MLP (``fc1``/``fc2``) or SwiGLU (``gate_proj``/``up_proj``/``down_proj``) blocks, LayerScale after the
    attention and the MLP. The MLP width is the integer config field ``mlp_ratio`` (times ``hidden_size``)."""

    family = "dinov2"
    model_types = ("dinov2", "dinov2_with_registers")
    description = "DINOv2 (MLP or SwiGLU, with or without registers): Dinov2Model, Dinov2ForImageClassification"
    spec = TransformerSpec(layers="encoder.layer", layer_scale="layer_scale2.lambda1", attention_layer_scale="layer_scale1.lambda1")

    def _mlp_width_fields(self, widths: list[tuple[int, int]], fields: dict[str, Any], per_layer: dict[int, dict[str, Any]]) -> None:
        """``mlp_ratio`` is an integer: only plain-MLP widths that are whole multiples of ``hidden_size`` are
        expressible (SwiGLU's width is derived from it with rounding, so never); others stay in the shape record."""
        config = self.model.config
        hidden = config.hidden_size
        swiglu = bool(getattr(config, "use_swiglu_ffn", False))
        values = [w for _, w in widths]
        expressible = [not swiglu and w % hidden == 0 for w in values]
        if len(set(values)) == 1 and expressible[0]:
            fields["mlp_ratio"] = values[0] // hidden
        elif values and all(expressible):
            for block_index, width in widths:
                if width // hidden != config.mlp_ratio:
                    per_layer.setdefault(block_index, {})["mlp_ratio"] = width // hidden
