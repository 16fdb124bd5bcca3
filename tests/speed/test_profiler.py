"""The per-layer latency profiler: every group's owner timed at each width (shrunk copies that compute what the
shrunk model computes), identical blocks measured once, the cache keyed by device/dtype/batch/size/runtime/versions
(stale or foreign caches detected and re-measured), the MACs fallback, sparsity levels (2:4 exploited only by the
semi-structured runtime), and the CostModel protocol driving the structured core's "dp" allocation."""

import json
from dataclasses import dataclass, field

import pytest
import torch

import hf_sparsify
from hf_sparsify import PruningConfig
from hf_sparsify.adapters import get_adapter
from hf_sparsify.speed import LatencyCost, LatencyProfiler, ProfilerError, TimingRule
from hf_sparsify.speed.profiler import _relative_group, _shrunk_copy
from hf_sparsify.structured import Allocation, Budget, CostModel, MacsCost, StructuredPruner, resolve_kinds, select_groups, shrink_group, unit_scores
from tests.conftest import make_tiny_model, tiny_batches

FAST = TimingRule(warmup=1, warmup_seconds=0.0, min_repeats=3, max_repeats=5, max_seconds=0.5)


def profiler(**kwargs):
    return LatencyProfiler(batch_size=2, rule=FAST, model_rule=FAST, **kwargs)


@pytest.mark.parametrize("family", ["vit", "dinov2_swiglu", "convnextv2"])
def test_a_shrunk_owner_copy_computes_what_the_shrunk_model_computes(family):
    model = make_tiny_model(family)
    groups = select_groups(get_adapter(model), ["mlp", "heads", "channels"])
    group = groups[-1]
    keep = torch.arange(group.num_units // 2)
    inputs = {}
    owner = model.get_submodule(group.name)
    handle = owner.register_forward_pre_hook(lambda m, a, k: inputs.setdefault("x", (a, k)), with_kwargs=True)
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 3, model.config.image_size, model.config.image_size))
    handle.remove()
    variant = _shrunk_copy(owner, group, len(keep))
    reference = make_tiny_model(family)
    shrink_group(reference, select_groups(get_adapter(reference), ["mlp", "heads", "channels"])[-1], keep)
    args, kwargs = inputs["x"]
    with torch.no_grad():
        a, b = variant(*args, **kwargs), reference.get_submodule(group.name)(*args, **kwargs)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b)
    assert owner.get_submodule(group.producers[0][len(group.name) + 1:]).out_features == group.num_units * group.unit_size  # the model is untouched


def test_group_times_measure_each_signature_once_and_read_the_cache_back(tmp_path):
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp", "heads"])
    widths = [[g.num_units, g.num_units // 2] for g in groups]
    first = profiler(cache=tmp_path / "latency.json")
    times = first.group_times(model, groups, widths)
    assert len(times) == 4 and all(len(row) == 2 and all(t > 0 for t in row) for row in times)
    assert times[0] == times[2] and times[1] == times[3]  # the two blocks are identical: one measurement each
    assert set(first.sources.values()) == {"measured"}
    stored = json.loads((tmp_path / "latency.json").read_text())
    assert stored["key"]["batch_size"] == 2 and stored["key"]["image_size"] == 16 and stored["key"]["runtime"] == "eager"
    assert {"torch", "transformers", "hf_sparsify"} <= set(stored["key"]["versions"]) and stored["key"]["device"]["type"] == "cpu"
    assert len(stored["entries"]) == 2  # one attention signature, one MLP signature
    again = profiler(cache=tmp_path / "latency.json", measure=False)
    assert again.group_times(model, groups, widths) == times and set(again.sources.values()) == {"cached"}


@pytest.mark.parametrize("change", ["batch", "versions", "format"])
def test_a_stale_or_foreign_cache_is_detected_and_re_measured(change, tmp_path, caplog):
    path = tmp_path / "latency.json"
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp"])
    profiler(cache=path).group_times(model, groups, [[64]] * 2)
    if change == "versions":
        data = json.loads(path.read_text())
        data["key"]["versions"]["torch"] = "1.0.0"
        path.write_text(json.dumps(data))
    elif change == "format":
        path.write_text("{not json")
    other = LatencyProfiler(batch_size=4 if change == "batch" else 2, rule=FAST, cache=path)
    other.group_times(model, groups, [[64]] * 2)
    expected = {"batch": "batch_size: cached 2, now 4", "versions": "versions:", "format": "unreadable"}[change]
    assert expected in other.stale_reason
    assert set(other.sources.values()) == {"measured"}
    assert json.loads(path.read_text())["key"]["batch_size"] == (4 if change == "batch" else 2)  # replaced


def test_without_measurements_the_macs_cost_model_is_the_fallback(tmp_path):
    model = make_tiny_model("deit")
    groups = select_groups(get_adapter(model), ["mlp", "heads"])
    cost = LatencyCost(profiler(measure=False, cache=tmp_path / "none.json"))
    widths = [[g.num_units, 1] for g in groups]
    tables = cost.group_costs(model, groups, widths)
    assert cost.unit == "MACs" and cost.total(model) == MacsCost().total(model)
    units = MacsCost().unit_costs(model, groups)
    assert tables == [[u * g.num_units, u * 1] for u, g in zip(units, groups)]
    assert set(cost.profiler.sources.values()) == {"macs"}
    # with the whole model measured (cached), the estimate is in seconds: MACs × measured seconds per MAC
    measured = profiler(cache=tmp_path / "none.json")
    seconds = measured.model_time(model)
    scaled = LatencyCost(profiler(measure=False, cache=tmp_path / "none.json"))
    assert scaled.unit == "seconds" and scaled.total(model) == seconds
    estimate = scaled.group_costs(model, groups, widths)
    assert estimate[0][0] == pytest.approx(units[0] * groups[0].num_units * seconds / MacsCost().total(model))


def test_model_time_uncontrolled_time_and_prediction_add_up():
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp", "heads"])
    prof = profiler()
    total = prof.model_time(model)
    blocks = prof.group_times(model, groups, [[g.num_units] for g in groups])
    assert prof.uncontrolled_time(model, groups) == pytest.approx(total - sum(r[0] for r in blocks))
    assert prof.predict(model, groups, [g.num_units for g in groups]) == pytest.approx(total)
    half = prof.group_times(model, groups, [[g.num_units // 2] for g in groups])
    assert prof.predict(model, groups, [g.num_units // 2 for g in groups]) == pytest.approx(total - sum(r[0] for r in blocks) + sum(r[0] for r in half))


def test_sparsity_levels_cost_the_dense_time_where_no_runtime_exploits_them():
    model = make_tiny_model("vit")
    prof = profiler()
    times = prof.layer_times(model, levels=("dense", "2:4", 0.3))
    assert list(times) == [l.name for l in get_adapter(model).prunable_layers()]
    for row in times.values():
        assert row["dense"]["seconds"] == row["2:4"]["seconds"] == row["0.3"]["seconds"] > 0
        assert not any(level["exploited"] for level in row.values())
    with pytest.raises(ProfilerError, match="not 'dense', '2:4' or a density"):
        prof.layer_times(model, levels=("4:8",))


def test_bad_requests_are_refused():
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp"])
    with pytest.raises(ProfilerError, match="width 65 of vit.layers.0.mlp is outside \\[0, 64\\]"):
        profiler().group_times(model, groups, [[65], [8]])
    with pytest.raises(ProfilerError, match="one list per group"):
        profiler().group_times(model, groups, [[8]])
    outside = groups[0].__class__(**{**groups[0].__dict__, "consumers": ["vit.layers.1.mlp.fc2"]})
    with pytest.raises(ProfilerError, match="is not inside vit.layers.0.mlp"):
        _relative_group(outside)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision(dtype):
    model = make_tiny_model("dinov2")
    groups = select_groups(get_adapter(model), ["mlp"])
    prof = LatencyProfiler(batch_size=2, dtype=dtype, rule=FAST)
    assert all(t > 0 for row in prof.group_times(model, groups, [[g.num_units, 8] for g in groups]) for t in row)
    assert prof.key(model)["dtype"] == dtype


# ------------------------------------------------------------------------------------------------ the CostModel protocol
@dataclass(kw_only=True)
class LatencyNormConfig(PruningConfig):
    """Test method: neurons by consumer-column norm, a budget in measured seconds through the "dp" allocation."""

    pruning_ratio: float = field(default=0.3, metadata={"help": "fraction of the model's measured time removed"})
    target_field = "pruning_ratio"


class LatencyNormPruner(StructuredPruner):
    config_class = LatencyNormConfig
    title = "test-latency"
    profiler = None

    def kinds(self):
        return resolve_kinds(["mlp"])

    def allocation(self):
        return Allocation(Budget(self.config.pruning_ratio, "latency"), strategy="dp", normalization="mean", round_to=8)

    def cost_model(self, unit, groups, adapter):
        return LatencyCost(self.profiler) if unit == "latency" else super().cost_model(unit, groups, adapter)

    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result):
        return {g.name: unit_scores(model.get_submodule(g.consumers[0]).weight.detach().double().square().sum(0), g.unit_size) for g in groups}


def test_latency_cost_is_a_cost_model_the_dp_allocation_meets(tmp_path):
    from hf_sparsify import configuration

    model = make_tiny_model("deit", hidden_size=64, intermediate_size=512, num_hidden_layers=3)
    assert isinstance(LatencyCost(), CostModel)
    LatencyNormPruner.profiler = profiler(cache=tmp_path / "c.json", measure=False)  # MACs fallback: deterministic
    configuration.register_method("test-latency", LatencyNormConfig, LatencyNormPruner)
    try:
        pruned = hf_sparsify.prune(model, LatencyNormConfig(pruning_ratio=0.3), tiny_batches(model, 1))
    finally:
        configuration._METHODS.pop("test-latency", None)
    target = pruned.pruning_result.info["target"]
    assert target["achieved"] >= target["target"] and pruned.pruning_result.info["macs_reduction"] >= 0.3 - 1e-9
    assert all(r["width"] % 8 == 0 for r in pruned.pruning_result.layers.values())


def test_in_context_tables_time_each_block_class_inside_the_whole_model_and_cache_it(tmp_path):
    torch.manual_seed(0)
    model = make_tiny_model("vit")
    groups = select_groups(get_adapter(model), ["mlp", "heads"])
    widths = [[g.num_units, g.num_units // 2, 1] for g in groups]
    first = profiler(cache=tmp_path / "latency.json", context_rule=FAST)
    tables = first.group_times_in_context(model, groups, widths)
    dense = first.group_times(model, groups, [[g.num_units] for g in groups])
    total = first.model_time(model)
    assert all(row[0] >= alone[0] for row, alone in zip(tables, dense)) and sum(row[0] for row in tables) <= total  # the rest of the model keeps a time ≥ 0
    assert all(t >= 0 for row in tables for t in row)
    assert tables[0] == tables[2] and tables[1] == tables[3]  # one class per identical block: the saving is shared
    assert {v for k, v in first.sources.items() if k[0] == "context"} == {"in context"}
    stored = json.loads((tmp_path / "latency.json").read_text())["entries"]
    context = [e for e in stored.values() if e["signature"]["what"] == "context"]
    assert len(context) == 2 and all(set(e["times"]) == {"32", "1"} or set(e["times"]) == {"2", "1"} for e in context)
    for entry in context:  # each member's saving is the class's measured fraction of the model, shared by 2 members
        for w, stats in entry["times"].items():
            assert stats["saved_fraction"] == pytest.approx(1 - stats["seconds"] / stats["dense_seconds"])
            name = entry["signature"]["members"][0]
            index = [g.name for g in groups].index(name)
            assert tables[index][widths[index].index(int(w))] == pytest.approx(max(0.0, tables[index][0] - stats["saved_fraction"] / 2 * total))
    again = profiler(cache=tmp_path / "latency.json", measure=False)
    assert again.group_times_in_context(model, groups, widths) == tables
    assert {v for k, v in again.sources.items() if k[0] == "context"} == {"cached in context"}
    # LatencyCost switches between the two kinds of table
    assert LatencyCost(again, in_context=True).group_costs(model, groups, widths) == tables
    assert LatencyCost(again).group_costs(model, groups, widths) == again.group_times(model, groups, widths)


def test_in_context_savings_are_real_in_a_model_big_enough_to_time():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, image_size=64, patch_size=8)).eval()
    groups = select_groups(get_adapter(model), ["mlp"])
    prof = LatencyProfiler(batch_size=4, rule=FAST, model_rule=TimingRule(min_repeats=5, max_seconds=2), context_rule=TimingRule(min_repeats=7, max_seconds=3))
    tables = prof.group_times_in_context(model, groups, [[1024, 8]] * 2)
    assert all(row[1] < row[0] for row in tables)  # an MLP 128 times narrower is faster in the model too
