"""The DINOv3 adapters on tiny models of transformers' DINOv3ViTModel (plain and gated MLP, register tokens, RoPE,
LayerScale) and DINOv3ConvNextModel: layers and roles, structures owning every tensor, removal equal to zeroing,
width fields (heads per layer: the config derives head_dim from the head count)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from hf_sparsify.adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, DINOv3ConvNextAdapter, DINOv3ViTAdapter, get_adapter
from hf_sparsify.surgery import keep_units

VARIANTS = ["vit", "vit_gated", "convnext"]


def make_dinov3(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    if variant.startswith("vit"):
        config = transformers.DINOv3ViTConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_register_tokens=2,
            image_size=32, patch_size=16, layerscale_value=0.5, use_gated_mlp=variant == "vit_gated",
        )
        model = transformers.DINOv3ViTModel(config)
    else:
        model = transformers.DINOv3ConvNextModel(transformers.DINOv3ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], image_size=32))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "lambda1", "gamma")):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vit_layers_roles_and_structures():
    model = make_dinov3("vit")
    adapter = get_adapter(model)
    assert isinstance(adapter, DINOv3ViTAdapter)
    layers = adapter.prunable_layers()
    assert [l.name for l in layers[:6]] == [f"model.layer.0.{n}" for n in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.up_proj", "mlp.down_proj")]
    assert {l.role for l in layers} == {"attention.query", "attention.key", "attention.value", "attention.output", "mlp.fc1", "mlp.fc2"}
    heads, mlp = adapter.structure_groups()[:2]
    assert (heads.kind, heads.num_units, heads.unit_size, heads.count_attribute) == (ATTENTION_HEAD, 4, 8, "num_heads")
    assert heads.layer_scale == "model.layer.0.layer_scale1.lambda1" and mlp.layer_scale == "model.layer.0.layer_scale2.lambda1"
    assert (mlp.kind, mlp.num_units, mlp.producers, mlp.consumers) == (MLP_NEURON, 48, ["model.layer.0.mlp.up_proj"], ["model.layer.0.mlp.down_proj"])
    assert adapter.head_tokens() is None and adapter.image_input_shape() == (3, 32, 32)


def test_gated_mlp_neurons_own_gate_and_up_rows():
    adapter = get_adapter(make_dinov3("vit_gated"))
    mlp = adapter.structure_groups([MLP_NEURON])[0]
    assert mlp.producers == ["model.layer.0.mlp.gate_proj", "model.layer.0.mlp.up_proj"] and mlp.consumers == ["model.layer.0.mlp.down_proj"]
    assert {l.role for l in adapter.prunable_layers()} >= {"mlp.gate", "mlp.up", "mlp.down"}


def test_convnext_layers_skip_the_stem_and_structures_own_the_channels():
    model = make_dinov3("convnext")
    adapter = get_adapter(model)
    assert isinstance(adapter, DINOv3ConvNextAdapter)
    names = [(l.name, l.role) for l in adapter.prunable_layers()]
    assert ("model.stages.1.downsample_layers.1", "downsample") in names
    assert not any("stages.0.downsample" in n for n, _ in names)  # the stem stays dense
    group = adapter.structure_groups()[0]
    assert (group.kind, group.num_units, group.layer_scale) == (CONV_CHANNEL, 32, "model.stages.0.layers.0.gamma")
    assert group.producers == ["model.stages.0.layers.0.pointwise_conv1"] and group.consumers == ["model.stages.0.layers.0.pointwise_conv2"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_structures_own_every_tensor(variant):
    model = make_dinov3(variant)
    for group in get_adapter(model).structure_groups():
        rows = group.num_units * group.unit_size
        for name in group.producers:
            layer = model.get_submodule(name)
            assert layer.out_features == rows and (layer.bias is None or layer.bias.shape[0] == rows)
        for name in group.consumers:
            assert model.get_submodule(name).in_features == rows


@pytest.mark.parametrize("variant", VARIANTS)
def test_removing_units_equals_zeroing_their_outputs(variant):
    model, reference = make_dinov3(variant), make_dinov3(variant)
    g = torch.Generator().manual_seed(1)
    for group in get_adapter(model).structure_groups():
        keep = torch.randperm(group.num_units, generator=g)[: max(1, group.num_units // 2 - group.block_index % 2)].sort().values
        removed = sorted(set(range(group.num_units)) - set(keep.tolist()))
        with torch.no_grad():
            for name in group.consumers:
                reference.get_submodule(name).weight[:, group.unit_rows(torch.tensor(removed, dtype=torch.long))] = 0
        keep_units(model, group, keep)
    x = pixels()
    torch.testing.assert_close(model(pixel_values=x).last_hidden_state, reference(pixel_values=x).last_hidden_state, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())


def test_head_counts_are_written_per_layer_and_mlp_widths_as_intermediate_size():
    model = make_dinov3("vit")
    adapter = get_adapter(model)
    assert adapter.width_config_fields() == ({"intermediate_size": 48}, {})
    heads = adapter.structure_groups([ATTENTION_HEAD])
    for group in heads:
        keep_units(model, group, torch.arange(2))
    # the same count in both blocks, yet per layer: num_attention_heads=2 would make head_dim 16 (and RoPE's too)
    assert adapter.width_config_fields() == ({"intermediate_size": 48}, {0: {"num_attention_heads": 2}, 1: {"num_attention_heads": 2}})
    mlps = adapter.structure_groups([MLP_NEURON])
    keep_units(model, mlps[0], torch.arange(16))
    assert adapter.width_config_fields()[1] == {0: {"num_attention_heads": 2, "intermediate_size": 16}, 1: {"num_attention_heads": 2}}
    assert model.get_submodule(heads[0].name).num_heads == 2 and model.config.num_attention_heads == 4


def test_layout_mismatch_gives_the_targets_route():
    model = make_dinov3("vit")
    model.model.layer[0].attention.q_proj = nn.Identity()
    with pytest.raises(Exception, match="does not recognise.*targets="):
        get_adapter(model)
