"""SPDY through prune(): speed-up targets met, the database reused, the search, the profile output, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import hf_sparsify
from hf_sparsify.adapters import ATTENTION_HEAD, MLP_NEURON
from hf_sparsify.configuration import PruningConfigError
from hf_sparsify.methods.spdy import SPDYBaseMethodError, SPDYConfig, SPDYTargetError
from hf_sparsify.methods.spdy.pruner import profile_table, save_profile
from tests.conftest import make_tiny_model, tiny_batches

QUICK = dict(SPDYConfig.quick_settings)


def quick(**changes) -> SPDYConfig:
    return SPDYConfig(**{**QUICK, **changes})


def test_quick_run_meets_the_target_and_records_the_profile(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, quick(target_speedup=1.25), tiny_batches(model))
    result = pruned.pruning_result
    spdy = result.info["spdy"]
    assert spdy["predicted_speedup"] >= 1.25 and spdy["measured_speedup"] == pytest.approx(spdy["predicted_speedup"])
    assert spdy["predicted_cost"] <= spdy["budget"] * (1 + 1e-9)
    assert spdy["uncontrolled_cost"] > 0 and spdy["database"] == "scored"
    widths = {row["name"]: row["width"] for row in spdy["profile"]}
    assert widths == {name: facts["width"] for name, facts in result.layers.items()}
    assert result.summary["predicted_speedup"] >= 1.25
    assert "| group |" in profile_table(pruned)
    paths = save_profile(pruned, tmp_path / "profile")
    assert json.loads(paths["json"].read_text())["profile"] == json.loads(json.dumps(spdy["profile"]))
    if "chart" in paths:
        assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    # saved and reloaded in one call, same outputs
    pruned.save_pretrained(tmp_path / "model")
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / "model")
    pixels = tiny_batches(model)[0]["pixel_values"]
    torch.testing.assert_close(reloaded(pixel_values=pixels).logits, pruned(pixel_values=pixels).logits)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "SPDY" in card and "speed-up" in card


def test_database_is_reused_for_another_target_and_refused_for_other_weights(tmp_path, caplog):
    model = make_tiny_model("vit")
    data = tiny_batches(model)
    first = hf_sparsify.prune(model, quick(target_speedup=1.15, database=str(tmp_path / "db")), data)
    assert first.pruning_result.info["spdy"]["database"] == "scored and saved"
    assert (tmp_path / "db" / "spdy_database.safetensors").is_file()
    second = hf_sparsify.prune(model, quick(target_speedup=1.4, database=str(tmp_path / "db")), data)
    info = second.pruning_result.info["spdy"]
    assert info["database"] == "loaded" and "statistics" not in second.pruning_result.timings  # no VBP pass
    assert info["predicted_speedup"] >= 1.4
    other = make_tiny_model("vit", seed=1)
    third = hf_sparsify.prune(other, quick(target_speedup=1.15, database=str(tmp_path / "db")), tiny_batches(other))
    assert third.pruning_result.info["spdy"]["database"] == "scored and saved"
    assert "other weights" in caplog.text


def test_target_above_the_reachable_maximum_says_the_maximum():
    model = make_tiny_model("vit")
    with pytest.raises(SPDYTargetError, match=r"at most (\d+\.\d+)× faster") as err:
        hf_sparsify.prune(model, quick(target_speedup=5.0), tiny_batches(model))
    message = str(err.value)
    reachable = float(message.split("at most ")[1].split("×")[0])
    assert 1.2 < reachable < 5.0 and "target_speedup=" in message
    # the maximum it names is reachable
    pruned = hf_sparsify.prune(model, quick(target_speedup=reachable - 0.01), tiny_batches(model))
    assert pruned.pruning_result.info["spdy"]["predicted_speedup"] >= reachable - 0.01


def test_base_method_that_cannot_give_per_layer_variants():
    model = make_tiny_model("vit")
    with pytest.raises(SPDYBaseMethodError, match="cannot give SPDY per-layer variants"):
        hf_sparsify.prune(model, quick(base_method="woodfisher"), tiny_batches(model))  # magnitude / cap / fastcap: tests/methods/spdy/test_unstructured.py
    with pytest.raises(PruningConfigError, match="Unknown pruning method"):
        hf_sparsify.prune(model, quick(base_method="vbpp"), tiny_batches(model))


def test_bad_settings():
    with pytest.raises(PruningConfigError, match="> 1"):
        SPDYConfig(target_speedup=0.9)
    with pytest.raises(PruningConfigError, match="not both"):
        SPDYConfig(target_speedup=1.5, target_cost=1e6)
    with pytest.raises(PruningConfigError, match="cost="):
        SPDYConfig(cost="flops")
    assert SPDYConfig().target_speedup == 1.5


def test_sosp_base_prunes_heads_too_without_labels():
    model = make_tiny_model("vit", backbone=True)
    batches = [{"pixel_values": b["pixel_values"]} for b in tiny_batches(model)]
    pruned = hf_sparsify.prune(model, quick(base_method="sosp-h", target_speedup=1.3), batches)
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["loss"] == "kl" and spdy["predicted_speedup"] >= 1.3
    assert {row["kind"] for row in spdy["profile"]} == {MLP_NEURON, ATTENTION_HEAD}


def test_latency_cost_re_measures_a_foreign_cache(tmp_path):
    model = make_tiny_model("vit", intermediate_size=1024)  # MLPs large enough to matter next to the per-call overhead
    cache = tmp_path / "latency.json"
    cache.write_text(json.dumps({"key": {"format": "hf_sparsify.latency/1", "device": "another machine"}, "entries": {}}))
    config = quick(cost="latency", target_speedup=1.01, latency_cache=str(cache), profile_batch_size=2)
    pruned = hf_sparsify.prune(model, config, tiny_batches(model))
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["unit"] == "seconds" and "device" in spdy["profiler"]["stale_cache"]
    stored = json.loads(cache.read_text())
    assert stored["key"]["device"] != "another machine" and stored["entries"]  # re-measured and replaced
    assert spdy["profiler"]["tables"] == "in_context" and any(e["signature"]["what"] == "context" for e in stored["entries"].values())
    assert spdy["measured_speedup"] > 0 and pruned.pruning_speedups[0]["batch_size"] == 2
    assert spdy["target_met"] == (spdy["measured_speedup"] >= 1.01)  # said (and warned) when the measurement misses it
    # the chosen widths were timed against the dense model before the surgery (and solved again when outside the target band)
    first = spdy["corrections"][0]
    in_range = 1.01 <= first["measured_speedup"] <= 1.01 * 1.05
    assert first["measured_speedup"] > 0 and ("corrected_target" in first) == (not in_range and "note" not in first)
    # a second run reads the (now valid) cache: nothing stale
    again = hf_sparsify.prune(model, config.replace(measure_speedup=False), tiny_batches(model))
    assert again.pruning_result.info["spdy"]["profiler"]["stale_cache"] is None
    assert again.pruning_result.info["spdy"]["dense_cost"] == spdy["dense_cost"]
    # isolated block tables: the profiler's block times, no whole-model variant
    isolated = hf_sparsify.prune(model, config.replace(measure_speedup=False, latency_tables="isolated"), tiny_batches(model))
    info = isolated.pruning_result.info["spdy"]
    assert info["profiler"]["tables"] == "isolated" and info["dense_cost"] == spdy["dense_cost"]


def test_search_lowers_the_calibration_loss_below_c_equals_one_on_the_bundled_vit(demo_model, demo_processor, demo_calibration):
    config = SPDYConfig(
        target_speedup=1.4, cost="macs", num_levels=8, num_random_starts=8, search_steps=30, patience=8,
        num_calibration_samples=64, calibration_batch_size=32,
    )  # fmt: skip
    pruned = hf_sparsify.prune(demo_model, config, demo_calibration, image_processor=demo_processor)
    spdy = pruned.pruning_result.info["spdy"]
    assert spdy["calibration_loss"] < spdy["uniform_coefficients_loss"]
    assert spdy["predicted_speedup"] >= 1.4 and spdy["measured_speedup"] >= 1.4


def test_widths_default_to_multiples_of_64_for_a_gpu_and_8_for_a_cpu():
    from hf_sparsify.adapters import get_adapter
    from hf_sparsify.methods.spdy.pruner import SPDYPruner

    model = make_tiny_model("vit", intermediate_size=256)
    adapter = get_adapter(model)
    for device, expected in (("cpu", 8), ("cuda", 64)):  # the GPU case only names the device: nothing runs there
        pruner = SPDYPruner(quick(cost="macs", round_to=None, profile_device=device))
        pruner.plan(model, adapter)
        levels = pruner._levels(pruner.select(adapter))
        mlp = [lv for g, lv in zip(pruner.select(adapter), levels) if g.kind == MLP_NEURON]
        assert mlp and all(w % expected == 0 for lv in mlp for w in lv) and any(w % 64 for lv in mlp for w in lv) == (expected == 8)
    explicit = SPDYPruner(quick(cost="macs", round_to=16, profile_device="cuda"))
    explicit.plan(model, adapter)
    assert all(w % 16 == 0 for g, lv in zip(explicit.select(adapter), explicit._levels(explicit.select(adapter))) if g.kind == MLP_NEURON for w in lv)
