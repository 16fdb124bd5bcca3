"""A structured method is a score (and an optional fold) on the core: a test-only method pruning attention heads
and MLP neurons goes through prune(), save and one-call reload; heads shrink correctly in every transformer
family and dtype; budgets in units, parameters and MACs; the DP allocator; a pluggable (measured-style) cost."""

import json
import re
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify import PruningConfig, PruningConfigError
from hf_sparsify.adapters import ATTENTION_HEAD, MLP_NEURON, get_adapter
from hf_sparsify.observers import collect_activation_moments
from hf_sparsify.structured import (
    Allocation,
    Budget,
    MacsCost,
    StructuredPruner,
    removal_errors,
    resolve_kinds,
    select_groups,
    unit_scores,
)
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values

TRANSFORMERS = ["vit", "deit", "deit_teacher", "dinov2", "dinov2_swiglu", "dinov2_registers"]


@dataclass(kw_only=True)
class NormConfig(PruningConfig):
    """Test method: remove the units whose consumer columns have the smallest norm."""

    pruning_ratio: float = field(default=0.5, metadata={"help": "fraction removed"})
    structures: list[str] = field(default_factory=lambda: ["heads"], metadata={"help": "kinds pruned"})
    budget_unit: str = field(default="units", metadata={"help": "units, parameters or macs"})
    allocation: str = field(default="global", metadata={"help": "global, per_layer or dp"})
    fold: bool = field(default=False, metadata={"help": "fold the removed units' mean output"})

    target_field = "pruning_ratio"


class NormPruner(StructuredPruner):
    """Scores: squared norm of each unit's consumer columns (summed over a head's rows). Fold: the mean output."""

    config_class = NormConfig
    title = "test-norm"

    def kinds(self):
        return resolve_kinds(self.config.structures)

    def allocation(self):
        c = self.config
        return Allocation(Budget(c.pruning_ratio, c.budget_unit), strategy=c.allocation, normalization="mean")

    def score(self, model, adapter, groups, calibration, *, device, disable_tqdm, result):
        if self.config.fold:
            self._moments = collect_activation_moments(model, {g.name: g.observe for g in groups}, calibration)
        scores = {}
        for g in groups:
            columns = model.get_submodule(g.consumers[0]).weight.detach().double().square().sum(0)
            scores[g.name] = unit_scores(columns, g.unit_size)
        return scores

    def fold_values(self, model, group):
        return self._moments[group.name].mean if self.config.fold else None


@pytest.fixture
def norm_method():
    from hf_sparsify import configuration

    configuration.register_method("test-norm", NormConfig, NormPruner)
    yield "test-norm"
    configuration._METHODS.pop("test-norm", None)


def logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def heads_of(model):
    return [g for g in get_adapter(model).structure_groups([ATTENTION_HEAD]) if g.kind == ATTENTION_HEAD]


# ------------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("family", TRANSFORMERS)
def test_heads_shrink_and_reload_in_one_call_with_identical_logits(family, norm_method, tmp_path):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.4), tiny_batches(model, 1))
    counts = [g.num_units for g in heads_of(pruned)]
    assert sum(counts) == 8 - 3 and len(set(counts)) > 1  # global: 3 of 8 heads, unevenly
    for group in heads_of(pruned):
        attention = pruned.get_submodule(group.name)
        assert attention.num_attention_heads == group.num_units
        for name in group.producers:
            assert pruned.get_submodule(name).out_features == group.num_units * 8
        assert pruned.get_submodule(group.consumers[0]).in_features == group.num_units * 8
    x = tiny_pixel_values(model)
    assert torch.isfinite(logits(pruned, x)).all()
    pruned.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is type(pruned) and torch.equal(logits(loaded, x), logits(pruned, x))
    assert [g.num_units for g in heads_of(loaded)] == counts
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["head_dim"] == 8 and {int(k): v["num_attention_heads"] for k, v in saved["per_layer_config"].items()} == {
        i: c for i, c in enumerate(counts) if c != 4
    }
    with pytest.raises(Exception, match=r"(?i)per.layer|ambiguous|mismatch"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_uniform_head_counts_set_the_standard_fields_and_plain_transformers_loads(family, norm_method, tmp_path):
    model = make_tiny_model(family)
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.5, allocation="per_layer"), tiny_batches(model, 1))
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_attention_heads"] == 2 and saved["head_dim"] == 8 and "per_layer_config" not in saved
    x = tiny_pixel_values(model)
    assert torch.equal(logits(AutoModelForImageClassification.from_pretrained(tmp_path), x), logits(pruned, x))


@torch.no_grad()
def _make_constant_heads(model, group, heads, value):
    """Heads whose output is ``value`` for every input: zero value-projection rows with a constant bias (attention
    weights sum to 1, so the head outputs the value vector itself)."""
    v_proj = model.get_submodule(group.producers[2])
    rows = group.unit_rows(torch.tensor(heads))
    v_proj.weight[rows] = 0
    v_proj.bias[rows] = value


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_constant_heads_are_removed_without_changing_the_outputs_with_the_fold(family, norm_method):
    model = make_tiny_model(family)
    for k, group in enumerate(heads_of(model)):
        _make_constant_heads(model, group, [1, 3], 0.2 + 0.1 * k)
        with torch.no_grad():  # the constant heads get the smallest scores: their o_proj columns are scaled down
            model.get_submodule(group.consumers[0]).weight[:, group.unit_rows(torch.tensor([1, 3]))] *= 1e-2
    x = tiny_pixel_values(model, batch=5, seed=3)
    folded = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.5, fold=True), tiny_batches(model, 2))
    assert [g.num_units for g in heads_of(folded)] == [2, 2]
    torch.testing.assert_close(logits(folded, x), logits(model, x), rtol=1e-5, atol=1e-6)
    plain = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.5), tiny_batches(model, 2))
    assert (logits(plain, x) - logits(model, x)).abs().max() > 1e-4  # the fold is what keeps them


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_heads_shrink_in_half_precision(dtype, norm_method, tmp_path):
    model = make_tiny_model("dinov2").to(dtype)
    batches = [{"pixel_values": b["pixel_values"].to(dtype)} for b in tiny_batches(model, 2)]
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.4, structures=["heads", "mlp"], fold=True), batches)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    x = tiny_pixel_values(model).to(dtype)
    assert torch.isfinite(logits(pruned, x)).all()
    pruned.save_pretrained(tmp_path)
    loaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    assert next(loaded.parameters()).dtype == dtype and torch.equal(logits(loaded, x), logits(pruned, x))


# ------------------------------------------------------------------------------------------------ budgets, allocators
def test_summary_and_info_report_what_was_removed(norm_method):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.5, structures=["heads", "mlp"]), tiny_batches(model, 1))
    result = pruned.pruning_result
    report = hf_sparsify.sparsity_report(pruned)
    assert set(result.summary) == {"neurons_removed", "heads_removed", "macs_reduction", "params_reduction"}
    assert result.summary["macs_reduction"] == pytest.approx(1 - report.macs["pruned"] / report.macs["dense"], abs=1e-6)
    assert result.summary["params_reduction"] == pytest.approx(1 - report.total_params / report.dense_params, abs=1e-6)
    removed = {k: sum(r["removed"] for r in result.layers.values() if r["kind"] == k) for k in (MLP_NEURON, ATTENTION_HEAD)}
    assert result.summary["heads_removed"] == removed[ATTENTION_HEAD] / 8 and result.summary["neurons_removed"] == removed[MLP_NEURON] / 128
    assert result.info["target"]["budget"] == "structures"
    assert hf_sparsify.configuration.get_method("test-norm").pruner_class(NormConfig(structures=["heads", "mlp"])).plan(model, get_adapter(model)) == [
        "test-norm: 136 structures in 4 groups; removes 50% of the selected units (global allocation)"
    ]


@pytest.mark.parametrize("budget_unit", ["macs", "parameters"])
@pytest.mark.parametrize("allocation", ["global", "per_layer", "dp"])
def test_cost_budgets_are_met_over_heads_and_neurons(budget_unit, allocation, norm_method):
    model = make_tiny_model("vit", intermediate_size=128)
    config = NormConfig(pruning_ratio=0.3, structures=["heads", "mlp"], budget_unit=budget_unit, allocation=allocation)
    pruned = hf_sparsify.prune(model, config, tiny_batches(model, 1))
    info = pruned.pruning_result.info
    reduction = info["macs_reduction"] if budget_unit == "macs" else info["params_reduction"]
    units = MacsCost().unit_costs(model, select_groups(get_adapter(model), ["heads", "mlp"])) if budget_unit == "macs" else None
    chunk = max(units) / MacsCost().total(model) if units else 0.05  # a head is the largest step
    if allocation == "dp":
        assert 0.3 - chunk <= reduction  # the DP keeps the cost within budget: at least the target is removed
        assert reduction >= 0.3 - 1e-9
    else:
        assert abs(reduction - 0.3) <= chunk
    assert all(g.num_units >= 1 for g in heads_of(pruned))


def test_min_per_layer_keeps_a_head_in_every_attention(norm_method):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.95), tiny_batches(model, 1))
    assert [g.num_units for g in heads_of(pruned)] == [1, 1]


def test_dp_minimises_the_removed_score_within_the_budget(norm_method):
    import itertools

    from hf_sparsify.structured import allowed_widths

    model = make_tiny_model("vit", num_hidden_layers=3, intermediate_size=64)
    groups = select_groups(get_adapter(model), ["mlp"])
    scores = NormPruner(NormConfig(structures=["mlp"])).score(model, None, groups, None, device="cpu", disable_tqdm=True, result=None)
    normalised = [scores[g.name] / scores[g.name].mean() for g in groups]
    unit = MacsCost().unit_costs(model, groups)
    target = 0.25 * MacsCost().total(model)

    def removed_score(widths):
        return sum(removal_errors(s, [w])[0] for s, w in zip(normalised, widths))

    feasible = [
        widths
        for widths in itertools.product(*[allowed_widths(g.num_units, 8, 1) for g in groups])
        if sum((g.num_units - w) * c for g, w, c in zip(groups, widths, unit)) >= target
    ]
    best = min(removed_score(w) for w in feasible)
    pruned = hf_sparsify.prune(model, NormConfig(pruning_ratio=0.25, structures=["mlp"], budget_unit="macs", allocation="dp"), tiny_batches(model, 1))
    widths = [g.num_units for g in select_groups(get_adapter(pruned), ["mlp"])]
    assert pruned.pruning_result.info["macs_reduction"] >= 0.25
    assert removed_score(widths) == pytest.approx(best, rel=1e-12)  # the brute-force optimum over the allowed widths


class MeasuredCost:
    """A cost that is not linear in the width (as measured latency is): a fixed cost per group unless it is
    removed completely, plus a step per 16 units. Only the DP allocator takes it."""

    unit = "ticks"

    def total(self, model):
        return 100.0

    def group_costs(self, model, groups, widths):
        return [[(5.0 if w else 0.0) + 3.0 * -(-w // 16) for w in ws] for ws in widths]


class MeasuredNormPruner(NormPruner):
    def cost_model(self, unit, groups, adapter):
        return MeasuredCost() if unit == "ticks" else super().cost_model(unit, groups, adapter)


def test_a_pluggable_cost_model_drives_the_dp(norm_method):
    from hf_sparsify import configuration

    configuration._METHODS["test-norm"] = configuration.MethodEntry("test-norm", NormConfig, MeasuredNormPruner)
    model = make_tiny_model("vit", intermediate_size=64)
    config = NormConfig(pruning_ratio=0.1, structures=["mlp"], budget_unit="ticks", allocation="dp")
    pruned = hf_sparsify.prune(model, config, tiny_batches(model, 1))
    widths = [g.num_units for g in select_groups(get_adapter(pruned), ["mlp"])]
    kept_ticks = sum(MeasuredCost().group_costs(None, None, [[w] for w in widths]), [])
    assert sum(kept_ticks) <= 2 * (5 + 3 * 4) - 10  # 10 of the model's 100 ticks removed from the MLPs' 34
    assert pruned.pruning_result.info["target"] == {"budget": "ticks", "target": 10.0, "achieved": pytest.approx(34 - sum(kept_ticks))}
    with pytest.raises(PruningConfigError, match="'global' allocation needs a cost linear in the width"):
        hf_sparsify.prune(model, NormConfig(pruning_ratio=0.1, structures=["mlp"], budget_unit="ticks"), tiny_batches(model, 1))


def test_unknown_budget_unit_and_unreachable_budget(norm_method):
    model = make_tiny_model("vit")
    with pytest.raises(PruningConfigError, match="no cost model for budget unit 'flops'"):
        hf_sparsify.prune(model, NormConfig(budget_unit="flops"), tiny_batches(model, 1))
    with pytest.raises(PruningConfigError, match=re.escape("pruning_ratio=0.9 cannot be reached: removing attention heads")):
        hf_sparsify.prune(model, NormConfig(pruning_ratio=0.9, budget_unit="macs"), tiny_batches(model, 1))
    with pytest.raises(PruningConfigError, match="cannot be reached"):
        hf_sparsify.prune(model, NormConfig(pruning_ratio=0.9, budget_unit="macs", allocation="dp"), tiny_batches(model, 1))
