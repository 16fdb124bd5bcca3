"""Adapters for timm checkpoints loaded through transformers' ``TimmWrapperModel`` /
``TimmWrapperForImageClassification`` (``model_type="timm_wrapper"``; the wrapped timm model is ``model.timm_model``).

Two timm architectures are known, whatever the checkpoint's name (``timm/vit_small_patch16_224.augreg_in21k_ft_in1k``,
``timm/deit_small_distilled_patch16_224.fb_in1k``, ``timm/vit_small_patch14_dinov2.lvd142m``,
``timm/convnext_atto.d2_in1k``...):

* **VisionTransformer** (and its subclasses: DeiT's ``VisionTransformerDistilled``): blocks
  ``blocks.{i}`` of ``norm1 → attn (fused qkv, proj) → ls1 → norm2 → mlp → ls2``. The MLP is ``Mlp``
  (``fc1 → act → [norm] → fc2``), ``SwiGLU`` (``fc1_g``, ``fc1_x``, ``fc2``) or ``GluMlp`` (``SwiGLUPacked``: one
  ``fc1`` holding the two halves). A head owns three row ranges of the fused ``qkv``: its query rows
  ``h·d : (h+1)·d``, its key rows ``D + h·d ...`` and its value rows ``2D + h·d ...`` (``D = attn_dim``); the
  structure group says so with ``producer_sections``. Removing heads updates the attention's ``num_heads`` and
  ``attn_dim``, which timm's forward reads.
* **ConvNeXt**: blocks ``stages.{s}.blocks.{j}`` of ``conv_dw → norm → mlp (fc1 → act → [GRN] → fc2) → gamma``;
  with ``conv_mlp=True`` (``convnext_atto``...) ``fc1``/``fc2`` are 1×1 ``nn.Conv2d`` on NCHW maps. Structures: the
  blocks' hidden channels; the stages' downsampling convs are prunable weights, the stem stays dense.

timm is optional (``pip install hf_sparsify[timm]``); this module imports it only to recognise a wrapped model.
Another timm architecture (a ResNet, an EfficientNet...) gets the usual error with the ``targets=`` route.

timm itself rebuilds pruned widths from text files of per-module shapes (``timm/models/_prune.py``,
``adapt_model_from_string``: ``module:[shape]`` lines applied to a freshly built model); hf_sparsify does the same
from the shape record in ``config.json`` (:mod:`hf_sparsify.surgery.shapes`): the wrapper's config (the timm
``architecture`` and ``model_args``) builds the dense model, the record gives it the pruned shapes.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from .base import (
    ATTENTION_HEAD,
    CONV_CHANNEL,
    MLP_NEURON,
    ModelAdapter,
    PrunableLayer,
    StructureGroup,
    UnsupportedModelError,
    register_adapter,
)

__all__ = ["TimmVisionTransformerAdapter", "TimmConvNeXtAdapter", "timm_architecture"]

PREFIX = "timm_model"
_NORM_FOLD = "its MLP normalises the hidden units across units (a norm layer between the activation and fc2), so a removed unit's mean cannot be folded into fc2's bias exactly"
_ATTENTION_NORM_FOLD = "its attention normalises the heads' outputs together (scale_norm) before proj, so a removed head's mean cannot be folded into proj's bias exactly"
_GRN_FOLD = "timm's GlobalResponseNorm normalises the hidden channels across space between GELU and fc2, so a removed channel's mean cannot be folded into fc2's bias exactly"


def timm_architecture(model: nn.Module) -> str | None:
    """The timm architecture name of a wrapped timm model (``config.architecture``), or ``None``."""
    return getattr(getattr(model, "config", None), "architecture", None)


def _timm_class(module_path: str, class_name: str):
    """A timm class, or ``None`` when timm (or the class) cannot be imported (timm missing, or a torchvision built
    for another torch, whose import raises RuntimeError)."""
    try:
        module = __import__(module_path, fromlist=[class_name])
    except Exception:  # noqa: BLE001 - an unimportable timm recognises no model
        return None
    return getattr(module, class_name, None)


def _is_instance(obj, module_path: str, class_name: str) -> bool:
    cls = _timm_class(module_path, class_name)
    return cls is not None and isinstance(obj, cls)


def _layout_error(adapter: ModelAdapter, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"The {adapter.family} adapter does not recognise this timm model ({timm_architecture(adapter.model)!r}): {what}. "
        "hf_sparsify follows the module names of timm 1.0; prune it with targets= regexes, e.g. "
        "MagnitudeConfig(sparsity=0.5, targets=[r'\\.mlp\\.fc\\d$'])."
    )


class _TimmAdapter(ModelAdapter):
    """Shared by the timm adapters: the wrapped model, its image size, and the pruned layers' roles."""

    timm_module: str = ""
    timm_class: str = ""

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return _is_instance(getattr(model, PREFIX, None), cls.timm_module, cls.timm_class)

    @property
    def timm_model(self) -> nn.Module:
        return getattr(self.model, PREFIX)

    def image_input_shape(self) -> tuple[int, int, int]:
        """The wrapped model's input: a ViT's fixed ``patch_embed.img_size``, else the ``input_size`` of the
        checkpoint's ``pretrained_cfg`` (the wrapper's config, then the timm model's default)."""
        timm_model = self.timm_model
        patch_embed = getattr(timm_model, "patch_embed", None)
        img_size = getattr(patch_embed, "img_size", None)
        channels = None
        proj = getattr(patch_embed, "proj", None)
        if isinstance(proj, nn.Conv2d):
            channels = proj.in_channels
        if img_size is not None and not getattr(patch_embed, "dynamic_img_size", False):
            return channels or 3, int(img_size[0]), int(img_size[1])
        for cfg in (getattr(self.model.config, "pretrained_cfg", None), getattr(timm_model, "pretrained_cfg", None)):
            size = (cfg or {}).get("input_size") if isinstance(cfg, dict) else None
            if size:
                return int(size[0]), int(size[1]), int(size[2])
        return super().image_input_shape()

    def _layer(self, name: str, role: str, block: str, index: int) -> PrunableLayer:
        return PrunableLayer(name=name, module=self.model.get_submodule(name), role=role, block=block, block_index=index)


@register_adapter
class TimmVisionTransformerAdapter(_TimmAdapter):
    """timm ``VisionTransformer`` through the wrapper (ViT, DeiT with or without distillation token, DINOv2,
    LayerScale, registers; ``Mlp``, ``SwiGLU`` or packed ``GluMlp``): prunable ``attn.qkv``, ``attn.proj`` and the
    MLP's layers; structures are heads (fused ``qkv`` rows in three sections, ``proj`` columns) and MLP neurons."""

    family = "timm_vit"
    model_types = ("timm_wrapper",)
    description = "timm VisionTransformer (ViT, DeiT, DINOv2 checkpoints): TimmWrapperModel, TimmWrapperForImageClassification"
    timm_module = "timm.models.vision_transformer"
    timm_class = "VisionTransformer"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        blocks = self.blocks()
        if not blocks:
            raise _layout_error(self, "it has no blocks")
        name, block = blocks[0]
        attn = getattr(block, "attn", None)
        for attribute in ("qkv", "proj"):
            if not isinstance(getattr(attn, attribute, None), nn.Linear):
                raise _layout_error(self, f"{name}.attn has no nn.Linear {attribute!r} (a fused-qkv attention is expected)")
        for attribute in ("num_heads", "head_dim", "attn_dim"):
            if not isinstance(getattr(attn, attribute, None), int):
                raise _layout_error(self, f"{name}.attn has no integer {attribute!r} (timm >= 1.0.16 sets it)")
        self._mlp_layout(name, block)  # raises for an unknown MLP

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"{PREFIX}.blocks.{i}", block) for i, block in enumerate(self.timm_model.blocks)]

    # -- the MLP variants -----------------------------------------------------------------------------------
    def _mlp_layout(self, block_name: str, block: nn.Module) -> tuple[list[tuple[str, str]], str, dict[str, int]]:
        """``([(producer, role)], consumer, producer sections)`` of a block's MLP (names relative to the block)."""
        mlp = getattr(block, "mlp", None)
        if isinstance(getattr(mlp, "fc1_g", None), nn.Linear) and isinstance(getattr(mlp, "fc1_x", None), nn.Linear):
            return [("mlp.fc1_g", "mlp.gate"), ("mlp.fc1_x", "mlp.up")], "mlp.fc2", {}
        if isinstance(getattr(mlp, "fc1", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear):
            if _is_instance(mlp, "timm.layers.mlp", "GluMlp"):  # SwiGLUPacked: one fc1 holding both halves
                return [("mlp.fc1", "mlp.gate_up")], "mlp.fc2", {"mlp.fc1": 2}
            return [("mlp.fc1", "mlp.fc1")], "mlp.fc2", {}
        raise _layout_error(self, f"{block_name}.mlp is a {type(mlp).__name__} without nn.Linear fc1/fc2 (or fc1_g/fc1_x/fc2)")

    # -- unstructured targets ---------------------------------------------------------------------------------
    def prunable_layers(self) -> list[PrunableLayer]:
        layers: list[PrunableLayer] = []
        for index, (name, block) in enumerate(self.blocks()):
            producers, consumer, _ = self._mlp_layout(name, block)
            roles = [("attn.qkv", "attention.qkv"), ("attn.proj", "attention.output"), *[(p, r) for p, r in producers], (consumer, "mlp.down" if producers[0][1] != "mlp.fc1" else "mlp.fc2")]
            layers += [self._layer(f"{name}.{rel}", role, name, index) for rel, role in roles]
        return layers

    # -- structures -------------------------------------------------------------------------------------------
    def structure_groups(self, kinds: Iterable[str] | None = None) -> list[StructureGroup]:
        kinds = set(kinds) if kinds is not None else {MLP_NEURON, ATTENTION_HEAD}
        groups: list[StructureGroup] = []
        for index, (name, block) in enumerate(self.blocks()):
            if ATTENTION_HEAD in kinds:
                groups.append(self._head_group(name, index, block))
            if MLP_NEURON in kinds:
                groups.append(self._mlp_group(name, index, block))
        return groups

    @staticmethod
    def _layer_scale(name: str, block: nn.Module, attribute: str) -> str | None:
        scale = getattr(block, attribute, None)
        return f"{name}.{attribute}.gamma" if isinstance(getattr(scale, "gamma", None), nn.Parameter) else None

    @staticmethod
    def _norm_params(name: str, norm: nn.Module | None) -> list[tuple[str, int]]:
        return [(f"{name}.{p}", 0) for p, _ in norm.named_parameters(recurse=False)] if norm is not None else []

    def _head_group(self, name: str, index: int, block: nn.Module) -> StructureGroup:
        attn = block.attn
        producers = [f"{name}.attn.qkv"]
        if isinstance(getattr(attn, "gate", None), nn.Linear):  # gated attention: one gate row per output coordinate
            producers.append(f"{name}.attn.gate")
        norm = attn.norm if not isinstance(attn.norm, nn.Identity) else None  # scale_norm: a norm over attn_dim
        return StructureGroup(
            name=f"{name}.attn",
            kind=ATTENTION_HEAD,
            block=name,
            block_index=index,
            producers=producers,
            consumers=[f"{name}.attn.proj"],
            num_units=attn.num_heads,
            unit_size=attn.head_dim,
            extra_params=self._norm_params(f"{name}.attn.norm", norm),
            observe=f"{name}.attn.proj",
            layer_scale=self._layer_scale(name, block, "ls1"),
            count_attribute="num_heads",
            size_attributes={"attn_dim": attn.head_dim},
            producer_sections={f"{name}.attn.qkv": 3},
            blocks_exact_fold=_ATTENTION_NORM_FOLD if norm is not None else None,
        )

    def _mlp_group(self, name: str, index: int, block: nn.Module) -> StructureGroup:
        producers, consumer, sections = self._mlp_layout(name, block)
        norm = getattr(block.mlp, "norm", None)
        norm = norm if norm is not None and not isinstance(norm, nn.Identity) else None
        return StructureGroup(
            name=f"{name}.mlp",
            kind=MLP_NEURON,
            block=name,
            block_index=index,
            producers=[f"{name}.{p}" for p, _ in producers],
            consumers=[f"{name}.{consumer}"],
            num_units=block.get_submodule(consumer).in_features,
            extra_params=self._norm_params(f"{name}.mlp.norm", norm),
            observe=f"{name}.{consumer}",
            layer_scale=self._layer_scale(name, block, "ls2"),
            producer_sections={f"{name}.{p}": s for p, s in sections.items()},
            blocks_exact_fold=_NORM_FOLD if norm is not None else None,
        )

    def head_tokens(self) -> slice | None:
        """The tokens the classifier reads: the class token (``global_pool="token"``; DeiT distilled: the class and
        distillation tokens, one head each); ``None`` for a headless model or average pooling."""
        timm_model = self.timm_model
        if not isinstance(getattr(timm_model, "head", None), nn.Linear) or getattr(timm_model, "global_pool", "") != "token":
            return None
        return slice(0, 2) if isinstance(getattr(timm_model, "head_dist", None), nn.Linear) else slice(0, 1)


@register_adapter
class TimmConvNeXtAdapter(_TimmAdapter):
    """timm ``ConvNeXt`` through the wrapper (``convnext_atto`` ... ``convnext_xxlarge``, ConvNeXt-V2 with GRN;
    ``conv_mlp`` with 1×1 convs or Linear MLPs): prunable ``mlp.fc1``/``fc2`` and the stages' downsampling convs;
    structures are the blocks' hidden channels, with LayerScale ``gamma`` after ``fc2``."""

    family = "timm_convnext"
    model_types = ("timm_wrapper",)
    description = "timm ConvNeXt (ConvNeXt and ConvNeXt-V2 checkpoints): TimmWrapperModel, TimmWrapperForImageClassification"
    timm_module = "timm.models.convnext"
    timm_class = "ConvNeXt"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        blocks = self.blocks()
        if not blocks:
            raise _layout_error(self, "it has no blocks")
        name, block = blocks[0]
        for rel in ("fc1", "fc2"):
            layer = getattr(getattr(block, "mlp", None), rel, None)
            pointwise = isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1)
            if not pointwise:
                raise _layout_error(self, f"{name}.mlp.{rel} is not an nn.Linear or 1x1 nn.Conv2d")

    def blocks(self) -> list[tuple[str, nn.Module]]:
        out = []
        for s, stage in enumerate(self.timm_model.stages):
            for j, block in enumerate(stage.blocks):
                out.append((f"{PREFIX}.stages.{s}.blocks.{j}", block))
        return out

    def downsampling_layers(self) -> list[tuple[str, nn.Module, int]]:
        """``(name, conv, stage index)`` of every stage's downsampling conv (the stem is not a stage's)."""
        out = []
        for s, stage in enumerate(self.timm_model.stages):
            for k, module in enumerate(stage.downsample if isinstance(stage.downsample, nn.Sequential) else []):
                if isinstance(module, nn.Conv2d):
                    out.append((f"{PREFIX}.stages.{s}.downsample.{k}", module, s))
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        layers: list[PrunableLayer] = []
        downsample = {f"{PREFIX}.stages.{s}": (name, module) for name, module, s in self.downsampling_layers()}
        seen_stages: set[str] = set()
        for index, (name, block) in enumerate(self.blocks()):
            stage = name.split(".blocks.")[0]
            if stage not in seen_stages and stage in downsample:
                ds_name, ds_module = downsample[stage]
                layers.append(PrunableLayer(name=ds_name, module=ds_module, role="downsample", block=stage, block_index=None))
            seen_stages.add(stage)
            layers += [self._layer(f"{name}.mlp.fc1", "mlp.fc1", name, index), self._layer(f"{name}.mlp.fc2", "mlp.fc2", name, index)]
        return layers

    def structure_groups(self, kinds: Iterable[str] | None = None) -> list[StructureGroup]:
        kinds = set(kinds) if kinds is not None else {CONV_CHANNEL}
        if not kinds & {CONV_CHANNEL, MLP_NEURON}:
            return []
        groups = []
        for index, (name, block) in enumerate(self.blocks()):
            mlp = block.mlp
            grn = getattr(mlp, "grn", None)
            norm = getattr(mlp, "norm", None)
            norm = norm if norm is not None and not isinstance(norm, nn.Identity) else None
            extra = [(f"{name}.mlp.grn.{p}", -1) for p, _ in grn.named_parameters(recurse=False)] if grn is not None else []
            extra += [(f"{name}.mlp.norm.{p}", 0) for p, _ in norm.named_parameters(recurse=False)] if norm is not None else []
            groups.append(
                StructureGroup(
                    name=name,
                    kind=CONV_CHANNEL,
                    block=name,
                    block_index=index,
                    producers=[f"{name}.mlp.fc1"],
                    consumers=[f"{name}.mlp.fc2"],
                    num_units=mlp.fc1.weight.shape[0],
                    extra_params=extra,
                    observe=f"{name}.mlp.fc2",
                    layer_scale=f"{name}.gamma" if isinstance(getattr(block, "gamma", None), nn.Parameter) else None,
                    blocks_exact_fold=_GRN_FOLD if grn is not None else (_NORM_FOLD if norm is not None else None),
                )
            )
        return groups
