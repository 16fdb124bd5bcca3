"""The configurations of real Hub checkpoints, written by hand (no network in tests), and tiny models built from them.

Each entry is the checkpoint's published ``config.json`` as its library writes it — transformers' fields, or timm's
``architecture`` / ``num_classes`` / ``num_features`` / ``global_pool`` / ``pretrained_cfg`` that
``TimmWrapperConfig`` reads — from the checkpoints' published hyper-parameters: transformers' conversion scripts
and defaults (DINOv3, ViT, DeiT, DINOv2, ConvNeXt) and timm's model registry (``timm.models.vision_transformer``,
``deit``, ``convnext`` entry points and their ``pretrained_cfg``). ImageNet label names are left out (transformers
then names the 1,000 classes ``LABEL_i``; timm's wrapper fills ImageNet's own names). Entries named
``"... (backbone)"`` / ``"... (headless)"`` load the same checkpoint with the backbone class (``DeiTModel``,
``ConvNextV2Model``, ``TimmWrapperModel``), pruned label-free.

**What the tests change** (``test_overrides``), to keep each test a few seconds on a CPU: fewer blocks (2 for the
ViTs, one per stage for the ConvNeXts), and a small image (32 px: 2×2 patches of 16; 28 px for patch 14). Hidden
sizes, head counts, MLP widths, LayerScale, register tokens, biases, pooling and heads are the checkpoints' own.
Weights are random, LayerScale and biases perturbed away from their initial values so every tensor matters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import transformers

__all__ = ["CHECKPOINTS", "HubCheckpoint", "build_model", "image_batches", "pixel_values", "require_timm", "timm_skip_reason"]


@dataclass(frozen=True)
class HubCheckpoint:
    """A Hub checkpoint: its repo id, library, published config and the class its users load it with."""

    repo_id: str
    library: str  # "transformers" or "timm"
    config: dict[str, Any]
    model_class: str  # transformers class (the wrapper's for timm)
    test_overrides: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32

    @property
    def backbone(self) -> bool:
        """A model without a classification head (pruned label-free)."""
        return not self.model_class.endswith(("ForImageClassification", "WithTeacher"))


_IMAGENET_VIT_PRETRAINED_CFG = {
    "custom_load": False,
    "input_size": [3, 224, 224],
    "fixed_input_size": True,
    "interpolation": "bicubic",
    "crop_pct": 0.9,
    "crop_mode": "center",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "num_classes": 1000,
    "pool_size": None,
    "first_conv": "patch_embed.proj",
    "classifier": "head",
    "license": "apache-2.0",
}

CHECKPOINTS: dict[str, HubCheckpoint] = {
    # ---------------------------------------------------------------------------------------------- DINOv3
    "facebook/dinov3-vits16-pretrain-lvd1689m": HubCheckpoint(
        "facebook/dinov3-vits16-pretrain-lvd1689m",
        "transformers",
        {
            "architectures": ["DINOv3ViTModel"],
            "model_type": "dinov3_vit",
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_size": 384,
            "image_size": 224,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "key_bias": False,
            "layer_norm_eps": 1e-05,
            "layerscale_value": 1.0,
            "mlp_bias": True,
            "num_attention_heads": 6,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "num_register_tokens": 4,
            "patch_size": 16,
            "pos_embed_jitter": None,
            "pos_embed_rescale": 2.0,
            "pos_embed_shift": None,
            "proj_bias": True,
            "query_bias": True,
            "rope_theta": 100.0,
            "use_gated_mlp": False,
            "value_bias": True,
        },
        "DINOv3ViTModel",
        {"num_hidden_layers": 2, "image_size": 32},
    ),
    "facebook/dinov3-convnext-tiny-pretrain-lvd1689m": HubCheckpoint(
        "facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
        "transformers",
        {
            "architectures": ["DINOv3ConvNextModel"],
            "model_type": "dinov3_convnext",
            "depths": [3, 3, 9, 3],
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_sizes": [96, 192, 384, 768],
            "image_size": 224,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-06,
            "layer_scale_init_value": 1e-06,
            "num_channels": 3,
        },
        "DINOv3ConvNextModel",
        {"depths": [1, 1, 1, 1], "image_size": 32},
    ),
    # ---------------------------------------------------------------------------------------------- timm
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k": HubCheckpoint(
        "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        "timm",
        {
            "architecture": "vit_small_patch16_224",
            "num_classes": 1000,
            "num_features": 384,
            "global_pool": "token",
            "pretrained_cfg": {**_IMAGENET_VIT_PRETRAINED_CFG, "tag": "augreg_in21k_ft_in1k", "custom_load": True, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        },
        "TimmWrapperForImageClassification",
        {"model_args": {"depth": 2, "img_size": 32}},
    ),
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k (headless)": HubCheckpoint(
        "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        "timm",
        {
            "architecture": "vit_small_patch16_224",
            "num_classes": 1000,
            "num_features": 384,
            "global_pool": "token",
            "pretrained_cfg": {**_IMAGENET_VIT_PRETRAINED_CFG, "tag": "augreg_in21k_ft_in1k", "custom_load": True, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        },
        "TimmWrapperModel",
        {"model_args": {"depth": 2, "img_size": 32}},
    ),
    "timm/deit_small_distilled_patch16_224.fb_in1k": HubCheckpoint(
        "timm/deit_small_distilled_patch16_224.fb_in1k",
        "timm",
        {
            "architecture": "deit_small_distilled_patch16_224",
            "num_classes": 1000,
            "num_features": 384,
            "global_pool": "token",
            "pretrained_cfg": {**_IMAGENET_VIT_PRETRAINED_CFG, "tag": "fb_in1k", "classifier": ["head", "head_dist"]},
        },
        "TimmWrapperForImageClassification",
        {"model_args": {"depth": 2, "img_size": 32}},
    ),
    "timm/vit_small_patch14_dinov2.lvd142m": HubCheckpoint(
        "timm/vit_small_patch14_dinov2.lvd142m",
        "timm",
        {
            # registry: patch_size=14, embed_dim=384, depth=12, num_heads=6, init_values=1e-5 (LayerScale), img_size 518
            "architecture": "vit_small_patch14_dinov2",
            "num_classes": 0,
            "num_features": 384,
            "global_pool": "token",
            "pretrained_cfg": {**_IMAGENET_VIT_PRETRAINED_CFG, "tag": "lvd142m", "input_size": [3, 518, 518], "crop_pct": 1.0, "num_classes": 0},
        },
        "TimmWrapperModel",
        {"model_args": {"depth": 2, "img_size": 28}},
        image_size=28,
    ),
    "timm/convnext_atto.d2_in1k": HubCheckpoint(
        "timm/convnext_atto.d2_in1k",
        "timm",
        {
            # registry: depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True (1x1 Conv2d MLPs), LayerScale 1e-6
            "architecture": "convnext_atto",
            "num_classes": 1000,
            "num_features": 320,
            "global_pool": "avg",
            "pretrained_cfg": {
                "tag": "d2_in1k",
                "custom_load": False,
                "input_size": [3, 224, 224],
                "test_input_size": [3, 288, 288],
                "fixed_input_size": False,
                "interpolation": "bicubic",
                "crop_pct": 0.875,
                "test_crop_pct": 0.95,
                "crop_mode": "center",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "num_classes": 1000,
                "pool_size": [7, 7],
                "first_conv": "stem.0",
                "classifier": "head.fc",
                "license": "apache-2.0",
            },
        },
        "TimmWrapperForImageClassification",
        {"model_args": {"depths": [1, 1, 1, 1]}},
    ),
    "timm/convnext_atto.d2_in1k (headless)": HubCheckpoint(
        "timm/convnext_atto.d2_in1k",
        "timm",
        {
            # registry: depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True (1x1 Conv2d MLPs), LayerScale 1e-6
            "architecture": "convnext_atto",
            "num_classes": 1000,
            "num_features": 320,
            "global_pool": "avg",
            "pretrained_cfg": {
                "tag": "d2_in1k",
                "custom_load": False,
                "input_size": [3, 224, 224],
                "test_input_size": [3, 288, 288],
                "fixed_input_size": False,
                "interpolation": "bicubic",
                "crop_pct": 0.875,
                "test_crop_pct": 0.95,
                "crop_mode": "center",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "num_classes": 1000,
                "pool_size": [7, 7],
                "first_conv": "stem.0",
                "classifier": "head.fc",
                "license": "apache-2.0",
            },
        },
        "TimmWrapperModel",
        {"model_args": {"depths": [1, 1, 1, 1]}},
    ),
    # ---------------------------------------------------------------------------------------------- transformers
    "google/vit-base-patch16-224": HubCheckpoint(
        "google/vit-base-patch16-224",
        "transformers",
        {
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "attention_probs_dropout_prob": 0.0,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 768,
            "image_size": 224,
            "initializer_range": 0.02,
            "intermediate_size": 3072,
            "layer_norm_eps": 1e-12,
            "num_attention_heads": 12,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "patch_size": 16,
            "qkv_bias": True,
            "num_labels": 1000,
        },
        "ViTForImageClassification",
        {"num_hidden_layers": 2, "image_size": 32},
    ),
    "facebook/deit-small-distilled-patch16-224": HubCheckpoint(
        "facebook/deit-small-distilled-patch16-224",
        "transformers",
        {
            "architectures": ["DeiTForImageClassificationWithTeacher"],
            "model_type": "deit",
            "attention_probs_dropout_prob": 0.0,
            "encoder_stride": 16,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 384,
            "image_size": 224,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "layer_norm_eps": 1e-12,
            "num_attention_heads": 6,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "patch_size": 16,
            "qkv_bias": True,
            "num_labels": 1000,
        },
        "DeiTForImageClassificationWithTeacher",
        {"num_hidden_layers": 2, "image_size": 32},
    ),
    "facebook/deit-small-distilled-patch16-224 (backbone)": HubCheckpoint(
        "facebook/deit-small-distilled-patch16-224",
        "transformers",
        {
            "architectures": ["DeiTForImageClassificationWithTeacher"],
            "model_type": "deit",
            "attention_probs_dropout_prob": 0.0,
            "encoder_stride": 16,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 384,
            "image_size": 224,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "layer_norm_eps": 1e-12,
            "num_attention_heads": 6,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "patch_size": 16,
            "qkv_bias": True,
            "num_labels": 1000,
        },
        "DeiTModel",
        {"num_hidden_layers": 2, "image_size": 32},
    ),
    "facebook/dinov2-small": HubCheckpoint(
        "facebook/dinov2-small",
        "transformers",
        {
            "architectures": ["Dinov2Model"],
            "model_type": "dinov2",
            "attention_probs_dropout_prob": 0.0,
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 384,
            "image_size": 518,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-06,
            "layerscale_value": 1.0,
            "mlp_ratio": 4,
            "num_attention_heads": 6,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "patch_size": 14,
            "qkv_bias": True,
            "use_swiglu_ffn": False,
        },
        "Dinov2Model",
        {"num_hidden_layers": 2, "image_size": 28},
        image_size=28,
    ),
    "facebook/convnext-tiny-224": HubCheckpoint(
        "facebook/convnext-tiny-224",
        "transformers",
        {
            "architectures": ["ConvNextForImageClassification"],
            "model_type": "convnext",
            "depths": [3, 3, 9, 3],
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_sizes": [96, 192, 384, 768],
            "image_size": 224,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "layer_scale_init_value": 1e-06,
            "num_channels": 3,
            "num_stages": 4,
            "patch_size": 4,
            "num_labels": 1000,
        },
        "ConvNextForImageClassification",
        {"depths": [1, 1, 1, 1], "image_size": 32},
    ),
    "facebook/convnextv2-tiny-1k-224 (backbone)": HubCheckpoint(
        "facebook/convnextv2-tiny-1k-224",
        "transformers",
        {
            "architectures": ["ConvNextV2ForImageClassification"],
            "model_type": "convnextv2",
            "depths": [3, 3, 9, 3],
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_sizes": [96, 192, 384, 768],
            "image_size": 224,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "num_channels": 3,
            "num_stages": 4,
            "patch_size": 4,
            "num_labels": 1000,
        },
        "ConvNextV2Model",
        {"depths": [1, 1, 1, 1], "image_size": 32},
    ),
}


def timm_skip_reason() -> str | None:
    """Why timm checkpoints cannot be built here (timm or the torchvision it imports is missing or broken), or None."""
    try:
        import timm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure (a torchvision built for another torch) skips
        return (
            f"timm is not importable here ({type(err).__name__}: {err}); these tests need the optional extra "
            "`pip install hf_sparsify[timm]` (timm and a torchvision built for the installed torch)"
        )
    return None


def require_timm(checkpoint: HubCheckpoint) -> None:
    """Skip the calling test, with the reason, when ``checkpoint`` is a timm one and timm is unavailable."""
    if checkpoint.library == "timm":
        reason = timm_skip_reason()
        if reason:
            pytest.skip(reason)


def build_config(checkpoint: HubCheckpoint):
    """The checkpoint's transformers config with the test's overrides (see the module docstring)."""
    data = copy.deepcopy(checkpoint.config)
    data.update(copy.deepcopy(checkpoint.test_overrides))
    if checkpoint.library == "timm":
        return transformers.TimmWrapperConfig.from_dict(data)
    model_type = data.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **data)


def build_model(checkpoint: HubCheckpoint, seed: int = 0):
    """A randomly initialised model of the checkpoint's configuration (test-size), in eval mode."""
    require_timm(checkpoint)
    config = build_config(checkpoint)
    torch.manual_seed(seed)
    model = getattr(transformers, checkpoint.model_class)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last in ("bias", "gamma", "lambda1", "layer_scale_parameter") or "grn" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def pixel_values(checkpoint: HubCheckpoint, batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, checkpoint.image_size, checkpoint.image_size, generator=g)


def image_batches(checkpoint: HubCheckpoint, num_batches: int = 4, batch: int = 2, num_labels: int = 1000) -> list[dict[str, torch.Tensor]]:
    """Calibration batches: images, and labels unless the checkpoint is a backbone (pruned label-free)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(num_batches):
        item = {"pixel_values": pixel_values(checkpoint, batch, seed=10 + i)}
        if not checkpoint.backbone:
            item["labels"] = torch.randint(0, num_labels, (batch,), generator=g)
        out.append(item)
    return out
