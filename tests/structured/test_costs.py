"""Per-unit costs: analytic values, and exactness: removing k units lowers the measured MACs / parameters by exactly
k unit costs, for neurons, heads and channels."""

import pytest
import torch

from hf_sparsify.adapters import get_adapter
from hf_sparsify.structured import (
    CostModel,
    LinearCostModel,
    MacsCost,
    MacsUnavailableError,
    ParamsCost,
    UnitsCost,
    count_macs,
    count_params,
    macs_unavailable_reason,
    select_groups,
    shrink_group,
)
from tests.conftest import make_tiny_model


def test_vit_unit_macs_match_the_analytic_count():
    model = make_tiny_model("vit")  # hidden 32, MLP 64, 4 heads of 8, 16 patches + CLS = 17 tokens
    tokens, d, head_dim = 17, 32, 8
    groups = select_groups(get_adapter(model), ["heads", "mlp"])
    costs = MacsCost().unit_costs(model, groups)
    head = 3 * tokens * d * head_dim + tokens * d * head_dim + 2 * tokens * tokens * head_dim  # q, k, v rows; o columns; products
    neuron = 2 * tokens * d
    assert costs == [head, neuron, head, neuron]
    assert MacsCost().total(model) == count_macs(model, [g.producers[0] for g in groups if g.kind == "attention_head"])["total"]


@pytest.mark.parametrize("family", ["vit", "deit_teacher", "dinov2", "dinov2_swiglu", "convnext", "convnextv2"])
@pytest.mark.parametrize("cost_model", [MacsCost, ParamsCost])
def test_removing_units_lowers_the_cost_by_exactly_their_unit_costs(family, cost_model):
    model = make_tiny_model(family)
    groups = select_groups(get_adapter(model), ["heads", "mlp", "channels"])
    cost = cost_model()
    before, unit = cost.total(model), cost.unit_costs(model, groups)
    removed = 0.0
    for k, group in enumerate(groups):
        drop = 1 + k % 2
        shrink_group(model, group, torch.arange(drop, group.num_units))
        removed += drop * unit[k]
    assert cost.total(model) == before - removed
    if cost_model is ParamsCost:
        assert cost.total(model) == count_params(model)


def test_cost_models_follow_the_protocol():
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp"])
    for cost in (MacsCost(), ParamsCost(), UnitsCost(groups)):
        assert isinstance(cost, CostModel) and isinstance(cost, LinearCostModel)
    assert UnitsCost(groups).total(model) == 128 and UnitsCost(groups).unit_costs(model, groups) == [1.0, 1.0]
    tables = ParamsCost().group_costs(model, groups, [[64, 32], [8]])
    unit = ParamsCost().unit_costs(model, groups)
    assert tables == [[64 * unit[0], 32 * unit[0]], [8 * unit[1]]]


def test_macs_of_a_model_without_images():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    assert "takes 'input_ids'" in macs_unavailable_reason(bert)
    assert macs_unavailable_reason(make_tiny_model("vit")) is None
    with pytest.raises(MacsUnavailableError, match="counted per image"):
        count_macs(bert)
    assert count_macs(bert, inputs={"input_ids": torch.zeros(1, 4, dtype=torch.long)})["total"] > 0
