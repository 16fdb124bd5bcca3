import pytest
import torch
from torch import nn

from hf_sparsify.adapters import (
    ATTENTION_HEAD,
    CONV_CHANNEL,
    MLP_NEURON,
    UnsupportedModelError,
    get_adapter,
    supported_model_types,
)
from tests.conftest import BACKBONES, make_tiny_model

FORBIDDEN = ("embeddings", "layernorm", "norm", "classifier", "layer_scale", "lambda1", "dwconv", "grn", "pooler")


def test_prunable_layers_are_linear_or_conv_and_never_embeddings_norms_or_heads(tiny_model):
    adapter = get_adapter(tiny_model)
    layers = adapter.prunable_layers()
    assert layers
    for layer in layers:
        assert isinstance(layer.module, (nn.Linear, nn.Conv2d))
        assert tiny_model.get_submodule(layer.name) is layer.module
        last = layer.name.split(".")[-1]
        assert not any(word in last for word in FORBIDDEN), layer.name
        assert "classifier" not in layer.name and "embeddings" not in layer.name


def test_roles_cover_attention_and_mlp(family, tiny_model):
    roles = {layer.role for layer in get_adapter(tiny_model).prunable_layers()}
    if family.startswith("convnext"):
        assert roles == {"mlp.fc1", "mlp.fc2", "downsample"}
    elif family == "dinov2_swiglu":
        assert roles == {"attention.query", "attention.key", "attention.value", "attention.output", "mlp.gate", "mlp.up", "mlp.down"}
    else:
        assert roles == {"attention.query", "attention.key", "attention.value", "attention.output", "mlp.fc1", "mlp.fc2"}


def test_structures_own_every_tensor(family, tiny_model):
    adapter = get_adapter(tiny_model)
    groups = adapter.structure_groups()
    kinds = {g.kind for g in groups}
    assert kinds == ({CONV_CHANNEL} if family.startswith("convnext") else {MLP_NEURON, ATTENTION_HEAD})
    for g in groups:
        rows = g.num_units * g.unit_size
        for name in g.producers:
            module = tiny_model.get_submodule(name)
            assert module.out_features == rows and (module.bias is None or module.bias.shape[0] == rows)
        for name in g.consumers:
            assert tiny_model.get_submodule(name).in_features == rows
        for param_name, dim in g.extra_params:
            assert tiny_model.get_parameter(param_name).shape[dim] == rows
        if g.kind == ATTENTION_HEAD:
            assert g.num_units == tiny_model.config.num_attention_heads
            assert len(g.producers) == 3 and g.count_attribute
    if family == "dinov2_swiglu":
        mlp = [g for g in groups if g.kind == MLP_NEURON][0]
        assert [p.split(".")[-1] for p in mlp.producers] == ["gate_proj", "up_proj"] and mlp.consumers[0].endswith("down_proj")
    if family == "convnextv2":
        assert all(g.extra_params and g.blocks_exact_fold for g in groups)
    if family.startswith("dinov2"):
        assert all(g.layer_scale.endswith("layer_scale2.lambda1") for g in groups if g.kind == MLP_NEURON)


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_bare_backbones_are_supported(family):
    model = make_tiny_model(family, backbone=True)
    adapter = get_adapter(model)
    names = [layer.name for layer in adapter.prunable_layers()]
    assert names and all(not n.startswith(("vit.", "deit.", "dinov2.", "convnext.")) for n in names)
    full = get_adapter(make_tiny_model(family)).prunable_layers()
    assert len(full) == len(names)


def test_deit_with_teacher_keeps_both_heads_dense():
    model = make_tiny_model("deit_teacher")
    names = [layer.name for layer in get_adapter(model).prunable_layers()]
    assert not any("classifier" in n for n in names)
    assert len(names) == 2 * 6


def test_unknown_architecture_lists_supported_and_shows_targets():
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(model)
    message = str(err.value)
    assert "model_type='resnet'" in message and "targets=" in message
    for model_type in ("vit", "deit", "dinov2", "convnext", "convnextv2"):
        assert model_type in message
    generic = get_adapter(model, allow_generic=True)
    layers = generic.select_layers([r"convolution$"])
    assert layers and all(isinstance(l.module, nn.Conv2d) for l in layers)


def test_targets_and_ignore(tiny_factory):
    model = tiny_factory("vit")
    adapter = get_adapter(model)
    fc = adapter.select_layers([r"mlp\.fc\d$"])
    assert [l.role for l in fc] == ["mlp.fc1", "mlp.fc2"] * 2
    with_head = adapter.select_layers([r"classifier"])
    assert [l.name for l in with_head] == ["classifier"] and with_head[0].role == "custom"
    no_first = adapter.select_layers(None, ignore=[r"layers\.0\."])
    assert len(no_first) == 6 and all("layers.1." in l.name for l in no_first)
    with pytest.raises(UnsupportedModelError, match="matched no"):
        adapter.select_layers([r"does_not_exist"])
    with pytest.raises(UnsupportedModelError, match="removed every"):
        adapter.select_layers(None, ignore=[r".*"])


def test_supported_types():
    assert set(supported_model_types()) >= {"vit", "deit", "dinov2", "dinov2_with_registers", "convnext", "convnextv2"}


def test_layout_mismatch_gives_clear_error(tiny_factory):
    model = tiny_factory("vit")
    del model.vit.layers[0].mlp.fc1
    with pytest.raises(UnsupportedModelError, match="does not recognise.*targets="):
        get_adapter(model)


# ------------------------------------------------------------------------------------------------ width config fields
def _shrink(model, kind, widths):
    from hf_sparsify.surgery import keep_units

    groups = [g for g in get_adapter(model).structure_groups([kind]) if g.kind == kind]
    for group, width in zip(groups, widths):
        keep_units(model, group, torch.arange(width))


def test_width_config_fields_of_vit():
    model = make_tiny_model("vit")
    adapter = get_adapter(model)
    assert adapter.width_config_fields() == ({"intermediate_size": 64}, {})  # dense: the fields as they are
    _shrink(model, MLP_NEURON, [32, 48])
    _shrink(model, ATTENTION_HEAD, [2, 2])
    assert adapter.width_config_fields() == ({"head_dim": 8, "num_attention_heads": 2}, {0: {"intermediate_size": 32}, 1: {"intermediate_size": 48}})
    _shrink(model, ATTENTION_HEAD, [1, 2])
    fields, per_layer = adapter.width_config_fields()
    assert fields == {"head_dim": 8}  # per-layer counts differ from the config's 4 heads in both blocks
    assert per_layer == {0: {"intermediate_size": 32, "num_attention_heads": 1}, 1: {"intermediate_size": 48, "num_attention_heads": 2}}


def test_width_config_fields_of_dinov2_use_the_integer_mlp_ratio():
    model = make_tiny_model("dinov2")  # hidden 32, MLP 64 = mlp_ratio 2
    _shrink(model, MLP_NEURON, [32, 32])
    assert get_adapter(model).width_config_fields() == ({"mlp_ratio": 1}, {})
    model = make_tiny_model("dinov2")
    _shrink(model, MLP_NEURON, [32, 64])
    assert get_adapter(model).width_config_fields() == ({}, {0: {"mlp_ratio": 1}})
    model = make_tiny_model("dinov2")
    _shrink(model, MLP_NEURON, [40, 40])  # not a multiple of hidden_size: only the shape record can hold it
    assert get_adapter(model).width_config_fields() == ({}, {})
    swiglu = make_tiny_model("dinov2_swiglu")
    _shrink(swiglu, MLP_NEURON, [32, 32])  # SwiGLU widths are derived from mlp_ratio with rounding: never expressible
    assert get_adapter(swiglu).width_config_fields() == ({}, {})


def test_convnext_has_no_width_fields():
    model = make_tiny_model("convnext")
    _shrink(model, CONV_CHANNEL, [16, 16, 16])
    assert get_adapter(model).width_config_fields() == ({}, {})


def test_every_adapter_class_is_documented():
    from hf_sparsify import adapters

    for name in adapters.__all__:
        obj = getattr(adapters, name)
        if isinstance(obj, type):
            assert obj.__doc__ and obj.__doc__.strip(), name
