"""The timm adapters on tiny timm models wrapped by transformers' TimmWrapper: VisionTransformer (plain MLP,
LayerScale + SwiGLU, DINOv2-giant's packed SwiGLU, DeiT's distillation token) and ConvNeXt (1×1-conv MLP,
Linear MLP, ConvNeXt-V2's GRN). Fused qkv heads own three row ranges; removing units equals zeroing them; costs
equal the measured reductions; other timm architectures get the targets= route. Skipped without timm."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import hf_sparsify
from hf_sparsify.adapters import (
    ATTENTION_HEAD,
    CONV_CHANNEL,
    MLP_NEURON,
    TimmConvNeXtAdapter,
    TimmVisionTransformerAdapter,
    UnsupportedModelError,
    get_adapter,
)
from hf_sparsify.structured import MacsCost, ParamsCost, attention_query_modules, count_macs, count_params, select_groups
from hf_sparsify.surgery import keep_units
from tests.models.hub_configs import timm_skip_reason

_REASON = timm_skip_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

_VIT = {"depth": 2, "img_size": 32, "embed_dim": 32, "num_heads": 4}
VARIANTS = {
    "vit": ("vit_small_patch16_224", dict(_VIT)),
    "vit_layerscale_swiglu": ("vit_small_patch16_224", {**_VIT, "init_values": 0.5, "mlp_layer": "swiglu"}),
    "vit_dinov2_packed_swiglu": ("vit_giant_patch14_dinov2", {"depth": 2, "img_size": 32, "patch_size": 16, "embed_dim": 32, "num_heads": 4}),
    "deit_distilled": ("deit_small_distilled_patch16_224", dict(_VIT)),
    "convnext_conv_mlp": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}),
    "convnext_linear_mlp": ("convnext_tiny", {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16], "ls_init_value": 0.5}),
    "convnextv2_grn": ("convnextv2_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}),
}
EQUIVALENT = [v for v in VARIANTS if v != "convnextv2_grn"]  # GRN normalises across channels: removal is not zeroing


def make_timm(variant: str, *, headless: bool = False, seed: int = 0):
    architecture, model_args = VARIANTS[variant]
    model_args = dict(model_args)
    if model_args.get("mlp_layer") == "swiglu":
        from timm.layers import SwiGLU

        model_args["mlp_layer"] = SwiGLU
    config = transformers.TimmWrapperConfig(architecture=architecture, model_args=model_args, num_labels=5)
    torch.manual_seed(seed)
    model = (transformers.TimmWrapperModel if headless else transformers.TimmWrapperForImageClassification)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "gamma")) or ".grn." in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def pixels(model, seed: int = 0) -> torch.Tensor:
    _, h, w = get_adapter(model).image_input_shape()
    h, w = min(h, 32), min(w, 32)
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_adapter_of_each_timm_architecture(variant):
    adapter = get_adapter(make_timm(variant))
    expected = TimmConvNeXtAdapter if variant.startswith("convnext") else TimmVisionTransformerAdapter
    assert type(adapter) is expected
    layers = adapter.prunable_layers()
    assert layers and all(isinstance(l.module, (nn.Linear, nn.Conv2d)) for l in layers)
    assert not any(part in l.name for l in layers for part in ("head", "patch_embed", "stem", "norm"))


def test_vit_layers_roles_and_structures():
    model = make_timm("vit_layerscale_swiglu")
    adapter = get_adapter(model)
    roles = [(l.name, l.role) for l in adapter.prunable_layers()[:5]]
    assert roles == [
        ("timm_model.blocks.0.attn.qkv", "attention.qkv"),
        ("timm_model.blocks.0.attn.proj", "attention.output"),
        ("timm_model.blocks.0.mlp.fc1_g", "mlp.gate"),
        ("timm_model.blocks.0.mlp.fc1_x", "mlp.up"),
        ("timm_model.blocks.0.mlp.fc2", "mlp.down"),
    ]
    heads, mlp = adapter.structure_groups()[:2]
    assert heads.producer_sections == {"timm_model.blocks.0.attn.qkv": 3} and heads.size_attributes == {"attn_dim": 8}
    assert (heads.num_units, heads.unit_size, heads.count_attribute) == (4, 8, "num_heads")
    assert heads.layer_scale == "timm_model.blocks.0.ls1.gamma" and mlp.layer_scale == "timm_model.blocks.0.ls2.gamma"
    packed = get_adapter(make_timm("vit_dinov2_packed_swiglu")).structure_groups([MLP_NEURON])[0]
    assert packed.producer_sections == {"timm_model.blocks.0.mlp.fc1": 2}  # GluMlp: gate and value halves in one fc1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_structures_own_every_tensor(variant):
    model = make_timm(variant)
    groups = get_adapter(model).structure_groups()
    assert {g.kind for g in groups} == ({CONV_CHANNEL} if variant.startswith("convnext") else {ATTENTION_HEAD, MLP_NEURON})
    for group in groups:
        for name in group.producers:
            weight = model.get_submodule(name).weight
            assert weight.shape[0] == group.num_units * group.rows_per_unit(name)
        for name in group.consumers:
            assert model.get_submodule(name).weight.shape[1] == group.num_units * group.unit_size
        for name, dim in group.extra_params:
            assert model.get_parameter(name).shape[dim] == group.num_units * group.unit_size
    if variant == "convnextv2_grn":
        assert all(g.extra_params and g.blocks_exact_fold for g in groups)


def test_removing_a_head_keeps_the_other_heads_query_key_and_value_rows():
    model = make_timm("vit")
    group = get_adapter(model).structure_groups([ATTENTION_HEAD])[0]
    attn = model.get_submodule(group.name)
    qkv = attn.qkv.weight.detach().clone()
    keep_units(model, group, torch.tensor([0, 2, 3]))
    attn = model.get_submodule(group.name)
    kept = [r for r in range(96) if (r % 32) // 8 != 1]  # head 1's rows in each of the q, k, v sections are gone
    assert torch.equal(attn.qkv.weight, qkv[kept])
    assert (attn.num_heads, attn.attn_dim, attn.proj.in_features) == (3, 24, 24)


@pytest.mark.parametrize("variant", EQUIVALENT)
def test_removing_units_equals_zeroing_their_outputs(variant):
    model, reference = make_timm(variant), make_timm(variant)
    g = torch.Generator().manual_seed(1)
    for group in get_adapter(model).structure_groups():
        keep = torch.randperm(group.num_units, generator=g)[: max(1, group.num_units // 2 - group.block_index % 2)].sort().values
        removed = torch.tensor(sorted(set(range(group.num_units)) - set(keep.tolist())), dtype=torch.long)
        with torch.no_grad():
            for name in group.consumers:
                reference.get_submodule(name).weight[:, group.unit_rows(removed)] = 0
        keep_units(model, group, keep)
    x = pixels(model)
    torch.testing.assert_close(logits(model, x), logits(reference, x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("variant", ["vit", "vit_dinov2_packed_swiglu", "convnext_conv_mlp"])
def test_unit_costs_equal_the_measured_reduction(variant):
    model = make_timm(variant)
    adapter = get_adapter(model)
    groups = adapter.structure_groups()[:2]
    queries = attention_query_modules(adapter)
    for cost, measure in ((MacsCost(queries), lambda m: count_macs(m, queries)["total"]), (ParamsCost(), count_params)):
        trial = make_timm(variant)
        trial_groups = get_adapter(trial).structure_groups()[:2]
        unit = cost.unit_costs(trial, trial_groups)
        before = measure(trial)
        for group in trial_groups:
            keep_units(trial, group, torch.arange(group.num_units - 2))
        assert before - measure(trial) == 2 * unit[0] + 2 * unit[1], type(cost).__name__
    assert all(q.endswith("attn.qkv") and s == 3 for q, s in queries.items()) and len(groups) == 2


def test_head_tokens_and_image_size():
    assert get_adapter(make_timm("vit")).head_tokens() == slice(0, 1)
    assert get_adapter(make_timm("deit_distilled")).head_tokens() == slice(0, 2)
    assert get_adapter(make_timm("vit", headless=True)).head_tokens() is None
    assert get_adapter(make_timm("vit")).image_input_shape() == (3, 32, 32)
    assert get_adapter(make_timm("convnext_conv_mlp")).image_input_shape() == (3, 224, 224)  # its pretrained_cfg


def test_other_timm_architectures_get_the_targets_route(tmp_path):
    config = transformers.TimmWrapperConfig(architecture="resnet18", num_labels=3)
    model = transformers.TimmWrapperForImageClassification(config).eval()
    with pytest.raises(UnsupportedModelError) as caught:
        hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    message = str(caught.value)
    assert "timm architecture 'resnet18'" in message and "ResNet" in message and "timm_wrapper" in message and "targets=" in message
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5, targets=[r"layer\d\.\d\.conv\d$"]))
    assert hf_sparsify.sparsity_report(pruned).sparsity == pytest.approx(0.5, abs=0.01)
    pruned.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path).eval(), x), logits(pruned, x))
    with pytest.raises(UnsupportedModelError, match="timm architecture 'resnet18'.*has no adapter"):
        select_groups(get_adapter(model, allow_generic=True), ["mlp"], method="VBP")


def test_layout_mismatch_gives_the_targets_route():
    model = make_timm("vit")
    model.timm_model.blocks[0].attn.qkv = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="does not recognise.*targets="):
        get_adapter(model)
