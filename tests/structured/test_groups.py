"""Structure groups selected by kind and name; per-unit views (head scores, output scales)."""

import pytest
import torch

from hf_sparsify import PruningConfigError
from hf_sparsify.adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, UnsupportedModelError, get_adapter
from hf_sparsify.structured import group_output_scale, output_scale, resolve_kinds, select_groups, unit_scores
from tests.conftest import make_tiny_model


def test_kind_aliases_resolve_and_unknown_kinds_are_refused():
    assert resolve_kinds(["mlp", "heads", "channels", "mlp"]) == [MLP_NEURON, ATTENTION_HEAD, CONV_CHANNEL]
    assert resolve_kinds([ATTENTION_HEAD]) == [ATTENTION_HEAD]
    with pytest.raises(PruningConfigError, match="unknown structure kind 'neurons'"):
        resolve_kinds(["neurons"])


@pytest.mark.parametrize("family", ["vit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers"])
def test_heads_and_mlps_of_transformers(family):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    heads = select_groups(adapter, ["heads"])
    assert [g.kind for g in heads] == [ATTENTION_HEAD] * 2
    assert all(g.num_units == 4 and g.unit_size == 8 and len(g.producers) == 3 for g in heads)
    both = select_groups(adapter, ["mlp", "heads"])
    assert [g.kind for g in both] == [ATTENTION_HEAD, MLP_NEURON] * 2  # model order: block by block
    assert select_groups(adapter, ["heads"], targets=[r"\.1\.attention$"])[0].block_index == 1
    if family.startswith("dinov2"):
        assert all(g.layer_scale.endswith("layer_scale1.lambda1") for g in heads)


def test_convnext_has_channels_only():
    adapter = get_adapter(make_tiny_model("convnext"))
    assert {g.kind for g in select_groups(adapter, ["mlp", "channels"])} == {CONV_CHANNEL}
    with pytest.raises(UnsupportedModelError, match="found no attention"):
        select_groups(adapter, ["heads"], method="SOSP")
    with pytest.raises(UnsupportedModelError, match="no attention heads for SOSP to prune; its structures are: ConvNeXt channels"):
        select_groups(adapter, ["channels", "heads"], method="SOSP", require_every_kind=True)


def test_targets_ignore_and_their_errors():
    adapter = get_adapter(make_tiny_model("vit"))
    assert [g.name for g in select_groups(adapter, ["mlp"], ignore=[r"layers\.0\."])] == ["vit.layers.1.mlp"]
    assert [g.name for g in select_groups(adapter, ["mlp"], targets=[r"fc2$"])] == ["vit.layers.0.mlp", "vit.layers.1.mlp"]
    with pytest.raises(PruningConfigError, match=r"matched no attention of this model; SOSP prunes attention heads, e\.g\. targets="):
        select_groups(adapter, ["heads"], targets=["classifier"], method="SOSP")
    with pytest.raises(PruningConfigError, match="excluded every structure group"):
        select_groups(adapter, ["heads", "mlp"], ignore=[".*"])


def test_models_without_an_adapter_have_no_structures():
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    with pytest.raises(UnsupportedModelError, match="SOSP prunes the attentions a model adapter knows.*has no adapter"):
        select_groups(get_adapter(model, allow_generic=True), ["heads"], method="SOSP")


def test_unit_scores_sum_a_heads_rows():
    rows = torch.arange(8.0)
    assert unit_scores(rows, 1) is rows
    assert unit_scores(rows, 4).tolist() == [6.0, 22.0]


def test_group_output_scale_of_heads_includes_layer_scale():
    model = make_tiny_model("dinov2")
    head = select_groups(get_adapter(model), ["heads"])[0]
    o_proj = model.get_submodule(head.consumers[0]).weight.detach()
    gamma = model.get_parameter(head.layer_scale).detach()
    expected = float((o_proj.double() * gamma.double()[:, None]).square().sum(0).mean())
    assert group_output_scale(model, head) == pytest.approx(expected, rel=1e-12)
    assert output_scale(o_proj) != pytest.approx(expected)  # LayerScale matters
