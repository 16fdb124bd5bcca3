"""SOSP-H and SOSP-I through ``prune()``: every family and kind shrinks and reloads with identical logits, budgets,
label-free backbones, iterative rounds, and every bad input with its error."""

from __future__ import annotations

import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import UnsupportedModelError
from hf_sparsify.configuration import PruningConfigError
from hf_sparsify.data import CalibrationDataError
from hf_sparsify.methods.base import PruningError
from hf_sparsify.methods.sosp import pruner as sosp_pruner
from tests.conftest import make_tiny_model, tiny_batches, tiny_pixel_values
from tests.methods.sosp.helpers import float64_batches
from tests.methods.sosp.test_saliency import quadratic_case

CONFIGS = {"sosp-h": hf_sparsify.SOSPHConfig, "sosp-i": hf_sparsify.SOSPIConfig}
QUICK = {"round_to": 1, "min_neurons_per_layer": 1, "num_calibration_samples": 8, "calibration_batch_size": 4}


def _logits(model, pixels):
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def _prune(family, method="sosp-h", **settings):
    model = make_tiny_model(family)
    config = CONFIGS[method](**{**QUICK, **settings})
    return model, hf_sparsify.prune(model, config, tiny_batches(model, num_batches=2, batch=4), disable_tqdm=True)


CASES = [
    ("vit", ["heads"]), ("vit", ["mlp"]), ("deit", ["heads", "mlp"]), ("deit_teacher", ["heads", "mlp"]),
    ("dinov2", ["heads"]), ("dinov2_swiglu", ["mlp", "heads"]), ("dinov2_registers", ["heads", "mlp"]),
    ("convnext", ["channels"]), ("convnextv2", ["channels"]),
]  # fmt: skip


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family,structures", CASES, ids=[f"{f}-{'+'.join(s)}" for f, s in CASES])
def test_removing_structures_leaves_every_family_runnable_and_reloadable(family, structures, method, tmp_path):
    loss = "kl" if family == "deit_teacher" else "labels"  # the teacher model computes no loss of its own
    model, pruned = _prune(family, method, structures=structures, pruning_ratio=0.4, budget_unit="structures", loss=loss)
    layers = pruned.pruning_result.layers
    kinds = {"heads": "attention_head", "mlp": "mlp_neuron", "channels": "conv_channel"}
    assert {facts["kind"] for facts in layers.values()} == {kinds[s] for s in structures}
    removed = sum(f["removed"] for f in layers.values())
    assert removed == pytest.approx(0.4 * sum(f["dense_width"] for f in layers.values()), abs=1)
    pixels = tiny_pixel_values(model)
    expected = _logits(pruned, pixels)
    assert torch.isfinite(expected).all()
    pruned.save_pretrained(tmp_path)
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(reloaded, pixels), expected, rtol=0, atol=0)
    assert hf_sparsify.PruningConfig.from_pretrained(tmp_path).method == method


@pytest.mark.parametrize("budget_unit,key", [("macs", "macs_reduction"), ("parameters", "params_reduction")])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_cost_budgets_are_met(method, budget_unit, key):
    _, pruned = _prune("vit", method, pruning_ratio=0.3, budget_unit=budget_unit)
    info = pruned.pruning_result.info
    assert info[key] == pytest.approx(0.3, abs=0.02)  # one head of these tiny models is 3-4% of their MACs
    assert info["allocation"] == "global" and info["variant"] == method and info["budget_unit"] == budget_unit
    assert info["num_calibration_samples"] == 8 and info["num_structures"] == 2 * (4 + 64)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_scores_of_every_kind_meet_on_one_scale(method):
    # a head whose o_proj columns are zero changes nothing: its loss change is 0, below every neuron's, so one
    # global ranking over loss changes removes it first, whatever its kind
    model = make_tiny_model("vit")
    with torch.no_grad():
        model.vit.layers[1].attention.o_proj.weight[:, 8:16] = 0  # head 1 (head_dim 8)
    config = CONFIGS[method](**{**QUICK, "pruning_ratio": 1.5 / 136, "budget_unit": "structures"})
    pruned = hf_sparsify.prune(model, config, tiny_batches(model, num_batches=2, batch=4), disable_tqdm=True)
    removed = {name: f["removed"] for name, f in pruned.pruning_result.layers.items() if f["removed"]}
    assert removed == {"vit.layers.1.attention": 1}
    assert pruned.pruning_result.layers["vit.layers.1.attention"]["removed_saliency"] == 0
    torch.testing.assert_close(_logits(pruned, tiny_pixel_values(model)), _logits(model, tiny_pixel_values(model)))


def test_label_free_on_a_backbone():
    model = make_tiny_model("dinov2", backbone=True)
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, num_batches=2, batch=4)]
    for method in CONFIGS:
        config = CONFIGS[method](**{**QUICK, **CONFIGS[method].label_free_settings})
        assert config.loss == "kl" and not config.needs_labels()
        pruned = hf_sparsify.prune(model, config, batches, disable_tqdm=True)
        info = pruned.pruning_result.info
        assert info["loss"] == "kl" and info["macs_reduction"] == pytest.approx(0.3, abs=0.02)
        with torch.no_grad():
            assert torch.isfinite(pruned(pixel_values=tiny_pixel_values(model)).last_hidden_state).all()
    with pytest.raises(CalibrationDataError, match="loss='kl'"):
        hf_sparsify.prune(model, hf_sparsify.SOSPHConfig(**QUICK), batches)


def test_iterative_rounds_reach_the_budget_and_record_each_round():
    model, pruned = _prune("deit", "sosp-h", pruning_ratio=0.4, iterative_steps=2)
    result = pruned.pruning_result
    assert result.info["macs_reduction"] == pytest.approx(0.4, abs=0.02)  # a head is 3-4% of these MACs
    rounds = result.info["rounds"]
    assert len(rounds) == 2 and rounds[0]["macs_reduction"] == pytest.approx(0.2, abs=0.02)
    assert rounds[1]["num_structures"] < rounds[0]["num_structures"]
    for facts in result.layers.values():
        assert facts["dense_width"] == (4 if facts["kind"] == "attention_head" else 64)
        assert facts["removed"] == facts["dense_width"] - facts["width"]
    assert result.summary["macs_reduction"] == pytest.approx(result.info["macs_reduction"], abs=1e-6)
    assert result.timings["saliency"] > 0


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_dp_allocation_and_rank_per_cost(method):
    _, pruned = _prune("vit", method, pruning_ratio=0.3, allocation="dp")
    assert pruned.pruning_result.info["allocation"] == "dp" and pruned.pruning_result.info["macs_reduction"] >= 0.3 - 1e-9  # at least the budget
    _, pruned = _prune("vit", method, pruning_ratio=0.3, rank_per_cost=True)
    assert pruned.pruning_result.info["macs_reduction"] == pytest.approx(0.3, abs=0.04)  # the nearest step: one head is 3-4%


def test_sosp_h_defaults_are_the_measured_saliency_and_the_exact_hessian():
    # chosen on held-out train images (benchmarks/RESULTS.md, "SOSP (issue 13)"); the test split was not used
    config = hf_sparsify.SOSPHConfig()
    assert (config.saliency, config.hessian, config.first_order, config.min_neurons_per_layer, config.iterative_steps) == ("sum_of_abs", "exact", True, 8, 1)


@pytest.mark.parametrize("saliency", ["sum_of_abs", "abs_of_sum"])
@pytest.mark.parametrize("hessian", ["exact", "gauss_newton"])
def test_sosp_h_options(saliency, hessian):
    _, pruned = _prune("dinov2_swiglu", "sosp-h", saliency=saliency, hessian=hessian, first_order=saliency == "sum_of_abs")
    info = pruned.pruning_result.info
    assert (info["saliency"], info["curvature"]) == (saliency, hessian)


def test_predicted_loss_change_is_the_true_change_for_a_quadratic_loss():
    model, groups, loss, batches = quadratic_case()
    config = hf_sparsify.SOSPIConfig(
        pruning_ratio=0.4, budget_unit="structures", structures=["mlp"], targets=[groups[0].name + "$"], loss=loss,
        round_to=1, min_neurons_per_layer=1, calibration_batch_size=3,
    )  # fmt: skip
    pruned = hf_sparsify.prune(model, config, batches, disable_tqdm=True)
    with torch.no_grad():
        before = sum(float(loss(model, b)) for b in batches) / len(batches)
        after = sum(float(loss(pruned, b)) for b in batches) / len(batches)
    assert pruned.pruning_result.layers[groups[0].name]["removed"] == 6
    assert pruned.pruning_result.info["predicted_loss_change"] == pytest.approx(after - before, rel=1e-9)


# ---------------------------------------------------------------------------------------------- bad inputs
def test_a_budget_that_would_remove_every_head_of_a_layer_is_refused_unless_allowed():
    model = make_tiny_model("vit")
    batches = tiny_batches(model, num_batches=2, batch=4)
    config = hf_sparsify.SOSPHConfig(**{**QUICK, "structures": ["heads"], "budget_unit": "structures", "pruning_ratio": 0.9})
    with pytest.raises(PruningConfigError, match=r"at most 75\.0%.*min_heads_per_layer=0"):
        hf_sparsify.prune(model, config, batches)
    allowed = hf_sparsify.prune(model, config.replace(min_heads_per_layer=0), batches, disable_tqdm=True)
    widths = [f["width"] for f in allowed.pruning_result.layers.values()]
    assert sum(widths) == 1 and 0 in widths  # a layer lost every head; the model's last head is always kept
    assert torch.isfinite(_logits(allowed, tiny_pixel_values(model))).all()


def test_the_refusal_comes_before_any_gradient(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a gradient pass started")

    monkeypatch.setattr(sosp_pruner, "run_gradients", fail)
    model = make_tiny_model("convnext")
    with pytest.raises(PruningConfigError, match="min_neurons_per_layer"):
        hf_sparsify.prune(model, hf_sparsify.SOSPIConfig(pruning_ratio=0.9, budget_unit="structures"), tiny_batches(model, 2, 4))
    with pytest.raises(PruningError, match=r"Gauss–Newton matrix over 160 structures .* needs 100\.0 KiB.*max_memory_gb=1e-06.*sosp-h"):
        hf_sparsify.prune(model, hf_sparsify.SOSPIConfig(max_memory_gb=1e-6), tiny_batches(model, 2, 4))


@pytest.mark.parametrize("family,structures,missing", [("vit", ["channels"], "ConvNeXt channel"), ("convnext", ["heads", "channels"], "attention head")])
def test_structures_the_model_does_not_have_are_refused(family, structures, missing):
    model = make_tiny_model(family)
    with pytest.raises(UnsupportedModelError, match=f"no {missing}s for SOSP-H"):
        hf_sparsify.prune(model, hf_sparsify.SOSPHConfig(structures=structures), tiny_batches(model, 2, 4))


def test_missing_labels_are_named_with_the_label_free_loss():
    model = make_tiny_model("vit")
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model, 2, 4)]
    for config_class in CONFIGS.values():
        with pytest.raises(CalibrationDataError, match=r"loss='labels' needs calibration data with labels.*loss='kl'"):
            hf_sparsify.prune(model, config_class(), batches)


def test_bad_configurations():
    for settings, match in (
        ({"pruning_ratio": 1.0}, "pruning_ratio must be in"),
        ({"budget_unit": "flops"}, "budget_unit"),
        ({"structures": ["neurons"]}, "structures"),
        ({"structures": []}, "prunes nothing"),
        ({"loss": "features"}, "linear in the model's outputs"),
        ({"loss": "mse"}, "loss"),
        ({"iterative_steps": 0}, "iterative_steps"),
        ({"min_heads_per_layer": -1}, "min_heads_per_layer"),
        ({"round_to": 0}, "round_to"),
        ({"allocation": "per_layer"}, "allocation"),
    ):
        with pytest.raises(PruningConfigError, match=match):
            hf_sparsify.SOSPHConfig(**settings)
    with pytest.raises(PruningConfigError, match="saliency"):
        hf_sparsify.SOSPHConfig(saliency="signed")
    with pytest.raises(PruningConfigError, match="gn_samples"):
        hf_sparsify.SOSPIConfig(gn_samples=0)


def test_a_custom_loss_is_saved_as_custom_and_must_be_given_again(tmp_path):
    model = make_tiny_model("vit")

    def loss(model, batch):
        return model(pixel_values=batch["pixel_values"]).logits.square().mean()

    pruned = hf_sparsify.prune(model, hf_sparsify.SOSPHConfig(**QUICK, loss=loss), tiny_batches(model, 2, 4), disable_tqdm=True)
    pruned.save_pretrained(tmp_path)
    saved = hf_sparsify.PruningConfig.from_pretrained(tmp_path)
    assert saved.loss == "custom"
    with pytest.raises(PruningConfigError, match="custom loss"):
        hf_sparsify.prune(model, saved, tiny_batches(model, 2, 4))


def test_half_precision_runs_and_keeps_the_dtype():
    for dtype in (torch.bfloat16, torch.float16):
        model = make_tiny_model("vit").to(dtype)
        pruned = hf_sparsify.prune(model, hf_sparsify.SOSPIConfig(**QUICK), tiny_batches(model, 2, 4), disable_tqdm=True)
        assert {p.dtype for p in pruned.parameters()} == {dtype}


def test_float64_model_gives_float64_statistics():
    model = make_tiny_model("vit").double()
    pruned = hf_sparsify.prune(model, hf_sparsify.SOSPIConfig(**QUICK), float64_batches(model), disable_tqdm=True)
    assert pruned.pruning_result.info["gauss_newton_bytes"] == 136 * 136 * 8


def test_plan_takes_the_device_and_refuses_a_matrix_that_does_not_fit_before_any_work():
    from hf_sparsify.adapters import get_adapter

    model = make_tiny_model("vit")
    adapter = get_adapter(model)
    lines = sosp_pruner.SOSPPruner(hf_sparsify.SOSPIConfig()).plan(model, adapter, device="cpu")
    assert "136×136 Gauss–Newton matrix" in lines[-1]
    assert "Hessian-vector product" in sosp_pruner.SOSPPruner(hf_sparsify.SOSPHConfig()).plan(model, adapter, device="cpu")[-1]
    with pytest.raises(PruningError, match="max_memory_gb=1e-06"):
        sosp_pruner.SOSPPruner(hf_sparsify.SOSPIConfig(max_memory_gb=1e-6)).plan(model, adapter, device="cpu")
