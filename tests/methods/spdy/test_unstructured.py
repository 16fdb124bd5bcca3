"""SPDY over per-layer sparsity levels (unstructured or 2:4) from magnitude, CAP or FastCAP: the database's levels
are what the base method gives directly, the programme meets the MACs budget, the search beats c = 1, 2:4 levels
are exact, latency without a runtime that exploits the levels is refused, the database is reused, half precision,
save and strict reload."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import get_adapter
from hf_sparsify.configuration import PruningConfigError
from hf_sparsify.data import CalibrationData
from hf_sparsify.methods.base import PruningResult
from hf_sparsify.methods.cap import CAPConfig, FastCAPConfig
from hf_sparsify.methods.cap.pruner import CAPPruner, FastCAPPruner
from hf_sparsify.methods.magnitude import MagnitudeConfig
from hf_sparsify.methods.spdy import SPDYConfig, SPDYTargetError
from hf_sparsify.methods.spdy.config import sparsity_levels
from hf_sparsify.methods.spdy.pruner import SPDYPruner, profile_table, save_profile
from hf_sparsify.methods.spdy.unstructured import (
    UnstructuredSPDYPruner,
    magnitude_variants,
)
from hf_sparsify.speed.runtimes import RuntimeUnavailableError
from hf_sparsify.structured import attention_query_modules, count_macs
from tests.conftest import make_tiny_model, tiny_batches

QUICK = {**SPDYConfig.quick_settings, "round_to": None}
CAP_SETTINGS = {"fisher_block_size": 16}


def quick(**changes) -> SPDYConfig:
    return SPDYConfig(**{**QUICK, **changes})


def _zero_sets_nested(weights: list[torch.Tensor]) -> bool:
    """Every level removes at least what the denser one before it removed."""
    return all(bool(((a == 0) <= (b == 0)).all()) for a, b in itertools.pairwise(weights))


def _calibration(model, batch=4, num_batches=2):
    return CalibrationData.from_source(tiny_batches(model, num_batches=num_batches, batch=batch), model=model, batch_size=batch)


# ------------------------------------------------------------------------------------------ the grid and the config
def test_the_reference_grid():
    levels = sparsity_levels(42, 0.4, 0.99)
    sparsities = [1 - d for d in levels]
    assert len(levels) == 42 and levels[0] == 1.0
    assert sparsities[1:4] == pytest.approx([0.4, 0.4584, 0.5111], abs=1e-4)
    assert sparsities[-2:] == pytest.approx([0.9889, 0.99], abs=1e-4)
    ratios = [levels[k + 1] / levels[k] for k in range(1, 41)]
    assert max(ratios) == pytest.approx(min(ratios))  # geometric in density
    assert quick(base_method="magnitude", mask_structure="2:4").sparsity_levels() == [1.0, "2:4"]


def test_settings_that_do_not_fit_the_base_are_refused():
    with pytest.raises(PruningConfigError, match="cost='macs'"):
        SPDYConfig(base_method="magnitude")  # the default cost is latency: unstructured levels are never faster
    with pytest.raises(PruningConfigError, match="semi-structured"):
        SPDYConfig(base_method="cap", mask_structure="2:4", cost="latency")  # eager does not exploit 2:4
    with pytest.raises(PruningConfigError, match="unstructured base method"):
        SPDYConfig(base_method="vbp", cost="macs", mask_structure="2:4")
    with pytest.raises(PruningConfigError, match="round_to"):
        SPDYConfig(base_method="magnitude", cost="macs", round_to=8)
    with pytest.raises(PruningConfigError, match="min_sparsity"):
        SPDYConfig(base_method="magnitude", cost="macs", min_sparsity=0.9, max_sparsity=0.5)
    with pytest.raises(PruningConfigError, match="N:M"):
        SPDYConfig(base_method="magnitude", cost="macs", mask_structure="4:2")
    # the one latency setting that is accepted: 2:4 on the semi-structured runtime; on a CPU its runtime check refuses
    # before any pruning
    config = SPDYConfig(base_method="magnitude", mask_structure="2:4", cost="latency", profile_runtime="semi-structured", **{k: v for k, v in QUICK.items() if k != "cost"})
    model = make_tiny_model("vit")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeUnavailableError, match="GPU|CUDA|cuda"):
            hf_sparsify.prune(model, config, tiny_batches(model))


def test_dispatch_and_bad_bases():
    pruner = SPDYPruner(quick(base_method="magnitude"))
    assert isinstance(pruner, UnstructuredSPDYPruner) and not pruner.changes_shapes
    assert type(SPDYPruner(quick())) is SPDYPruner
    with pytest.raises(PruningConfigError, match="grad_batch_size"):
        SPDYPruner(quick(base_method="cap", base_settings={"grad_batch_size": 1}))


# ------------------------------------------------------------------------------------------ the database
def test_magnitude_levels_equal_per_layer_magnitude_pruning_and_are_nested():
    model = make_tiny_model("vit")
    layers = get_adapter(model).select_layers()
    sparsities = [1 - d for d in sparsity_levels(8)[1:]]
    variants = magnitude_variants(layers, sparsities)
    for index in (0, 3, len(sparsities) - 1):
        direct = hf_sparsify.prune(model, MagnitudeConfig(sparsity=sparsities[index], sparsity_distribution="uniform"))
        for layer in layers:
            torch.testing.assert_close(variants[layer.name][index], direct.get_submodule(layer.name).weight, rtol=0, atol=0)
    for layer in layers:
        assert _zero_sets_nested(variants[layer.name])
    (nm,) = magnitude_variants(layers[:1], [], (2, 4))[layers[0].name]
    direct = hf_sparsify.prune(model, MagnitudeConfig(sparsity=0.5, mask_structure="2:4"))
    torch.testing.assert_close(nm, direct.get_submodule(layers[0].name).weight, rtol=0, atol=0)


@pytest.mark.parametrize(("pruner_class", "config_class", "extra"), [(CAPPruner, CAPConfig, {"sparsity_distribution": "uniform", "damp": 1e-6}), (FastCAPPruner, FastCAPConfig, {})])
def test_cap_and_fastcap_levels_equal_the_layer_local_pruning(pruner_class, config_class, extra):
    """One pass gives every sparsity: each level equals pruning every layer to that sparsity on its own (CAP: the
    layer's own lowest cumulative losses, then the replay), with the same gradients."""
    model = make_tiny_model("vit")
    adapter = get_adapter(model)
    settings = {"fisher_block_size": 16, "num_grads": 2, "calibration_batch_size": 4, **extra}
    sparsities = [0.4, 0.75, 0.95]
    variants = pruner_class(config_class(sparsity=0.5, **settings)).layer_variants(model, adapter, _calibration(model), sparsities, device=torch.device("cpu"), result=PruningResult("x"))
    for index, sparsity in enumerate(sparsities):
        direct = hf_sparsify.prune(model, config_class(sparsity=sparsity, **settings), tiny_batches(model))
        for layer in adapter.select_layers():
            got, want = variants[layer.name][index], direct.get_submodule(layer.name).weight
            assert torch.equal(got == 0, want == 0), layer.name
            torch.testing.assert_close(got, want)
    if pruner_class is CAPPruner:  # CAP's orders: a sparser level never keeps a weight a denser one removed
        assert all(_zero_sets_nested(ws) for ws in variants.values())
    # 2:4 from the N:M elimination path equals CAP's 2:4 pruning
    nm_settings = {**settings, "mask_structure": "2:4", "sparsity": 0.5}
    (nm,) = pruner_class(config_class(**nm_settings)).layer_variants(model, adapter, _calibration(model), [], device=torch.device("cpu"), result=PruningResult("x"))["vit.layers.0.mlp.fc1"]
    direct = hf_sparsify.prune(model, config_class(**nm_settings), tiny_batches(model))
    torch.testing.assert_close(nm, direct.get_submodule("vit.layers.0.mlp.fc1").weight)


# ------------------------------------------------------------------------------------------ the run
@pytest.mark.parametrize("base", ["magnitude", "cap", "fastcap"])
def test_the_programme_meets_the_macs_budget(base):
    model = make_tiny_model("vit")
    config = quick(base_method=base, target_speedup=1.4, base_settings=CAP_SETTINGS if base != "magnitude" else None)
    pruned = hf_sparsify.prune(model, config, tiny_batches(model))
    result = pruned.pruning_result
    spdy = result.info["spdy"]
    assert spdy["predicted_cost"] <= spdy["budget"] * (1 + 1e-9) and spdy["predicted_speedup"] >= 1.4
    counted = count_macs(pruned, attention_query_modules(get_adapter(pruned)))
    assert counted["total"] / counted["effective"] >= 1.4
    assert spdy["measured_speedup"] == pytest.approx(counted["total"] / counted["effective"])
    assert spdy["measured_speedup"] == pytest.approx(spdy["predicted_speedup"])  # no zeros outside the layers
    assert not getattr(pruned, "pruning_structured", False)
    for row in spdy["profile"]:
        weight = pruned.get_submodule(row["name"]).weight
        assert row["sparsity"] == pytest.approx(float((weight == 0).float().mean()))
        assert result.layers[row["name"]]["sparsity"] == row["sparsity"]
    report = hf_sparsify.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(result.summary["sparsity"], rel=1e-6)


def test_two_four_levels_are_exact_two_four_masks():
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, quick(base_method="cap", mask_structure="2:4", target_speedup=1.15, base_settings=CAP_SETTINGS), tiny_batches(model))
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["levels"] == "2:4" and spdy["predicted_speedup"] >= 1.15
    kinds = set()
    for row in spdy["profile"]:
        groups = (pruned.get_submodule(row["name"]).weight != 0).reshape(-1, 4).sum(1)
        if row["level"] == 1:
            assert row["kind"] == "2:4" and bool((groups == 2).all()), row["name"]
        else:
            assert row["kind"] == "dense" and bool((groups == 4).all()), row["name"]
        kinds.add(row["kind"])
    assert kinds == {"2:4", "dense"}


def test_unreachable_target_names_the_largest_speedup():
    model = make_tiny_model("vit")
    with pytest.raises(SPDYTargetError, match=r"at most (\d+\.\d+)× faster") as err:
        hf_sparsify.prune(model, quick(base_method="magnitude", target_speedup=20.0), tiny_batches(model))
    reachable = float(str(err.value).split("at most ")[1].split("×")[0])
    assert 1.5 < reachable < 20 and "max_sparsity" in str(err.value)
    with pytest.raises(SPDYTargetError, match="at most"):
        hf_sparsify.prune(model, quick(base_method="magnitude", mask_structure="2:4", target_speedup=3.0), tiny_batches(model))


def test_database_is_reused_for_another_target_and_rebuilt_for_other_weights(tmp_path, caplog):
    model = make_tiny_model("vit")
    data = tiny_batches(model)
    config = quick(base_method="cap", base_settings=CAP_SETTINGS, database=str(tmp_path / "db"), target_speedup=1.3)
    first = hf_sparsify.prune(model, config, data)
    assert first.pruning_result.info["spdy"]["database"] == "built and saved"
    assert (tmp_path / "db" / "spdy_level_database.safetensors").is_file()
    second = hf_sparsify.prune(model, config.replace(target_speedup=1.6), data)
    info, timings = second.pruning_result.info, second.pruning_result.timings
    assert info["spdy"]["database"] == "loaded" and "database" not in timings and "gradients" not in timings  # no CAP pass
    assert info["spdy"]["predicted_speedup"] >= 1.6
    # a second run at the first target loads the same levels: the same model
    again = hf_sparsify.prune(model, config, data)
    for name, param in first.named_parameters():
        torch.testing.assert_close(param, again.get_parameter(name), rtol=0, atol=0)
    other = make_tiny_model("vit", seed=1)
    third = hf_sparsify.prune(other, config, tiny_batches(other))
    assert third.pruning_result.info["spdy"]["database"] == "built and saved" and "other weights" in caplog.text


def test_label_free_backbone_with_cap():
    model = make_tiny_model("vit", backbone=True)
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model)]
    pruned = hf_sparsify.prune(model, quick(base_method="cap", base_settings=CAP_SETTINGS, target_speedup=1.3), batches)
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["loss"] == "kl" and spdy["predicted_speedup"] >= 1.3


def test_save_strict_reload_profile_and_card(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, quick(base_method="magnitude", target_speedup=1.5), tiny_batches(model))
    spdy = pruned.pruning_result.info["spdy"]
    assert "| layer | kind | sparsity |" in profile_table(pruned)
    paths = save_profile(pruned, tmp_path / "profile")
    assert json.loads(paths["json"].read_text())["profile"] == json.loads(json.dumps(spdy["profile"]))
    pruned.save_pretrained(tmp_path / "model")
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "model")
    pixels = tiny_batches(model)[0]["pixel_values"]
    torch.testing.assert_close(reloaded(pixel_values=pixels).logits, pruned(pixel_values=pixels).logits)
    assert hf_sparsify.sparsity_report(reloaded).sparsity == pytest.approx(hf_sparsify.sparsity_report(pruned).sparsity)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Speed-up allocation (SPDY)" in card and "sparsity level (unstructured)" in card and "| layer | kind | sparsity |" in card


def test_search_lowers_the_calibration_loss_below_c_equals_one_on_the_bundled_vit(demo_model, demo_processor, demo_calibration):
    config = SPDYConfig(
        base_method="magnitude", target_speedup=2.0, cost="macs", num_levels=12, num_random_starts=8, search_steps=30, patience=8,
        num_calibration_samples=64, calibration_batch_size=32,
    )  # fmt: skip
    pruned = hf_sparsify.prune(demo_model, config, demo_calibration, image_processor=demo_processor)
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["calibration_loss"] < spdy["uniform_coefficients_loss"]
    assert spdy["predicted_speedup"] >= 2.0 and spdy["measured_speedup"] >= 2.0
    assert math.isfinite(spdy["calibration_loss"])
