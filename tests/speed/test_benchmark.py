"""``benchmark``: one consistent record (timings, MACs, parameters, versions, ratio against an interleaved baseline)
for every runtime this machine has, in every dtype; the given models untouched; clear errors for a runtime or
device the machine lacks and for a baseline of another architecture or input size."""

import json

import pytest
import torch

import hf_sparsify
from hf_sparsify.speed import BaselineMismatchError, RuntimeUnavailableError, SpeedInputError, TimingRule, benchmark, check_runtime
from hf_sparsify.speed.benchmark import card_entry_from_dict, model_macs
from hf_sparsify.structured import MacsCost, count_params
from tests.conftest import make_tiny_model, tiny_batches

QUICK = TimingRule(warmup=1, warmup_seconds=0.05, min_repeats=3, max_seconds=1.0)


@pytest.fixture(scope="module")
def dense_and_pruned():
    dense = make_tiny_model("vit")
    pruned = hf_sparsify.prune(dense, hf_sparsify.VBPConfig(pruning_ratio=0.5, round_to=1, num_calibration_samples=8), tiny_batches(dense))
    return dense, pruned


def test_a_run_against_a_baseline_records_every_figure(dense_and_pruned):
    dense, pruned = dense_and_pruned
    result = benchmark(pruned, baseline=dense, batch_size=4, rule=QUICK)
    d = json.loads(result.to_json())
    for key in ("median_ms", "p90_ms", "p10_ms", "min_ms", "median_ci95_ms", "spread", "repeats", "throughput_images_per_s", "macs", "params", "runtime", "device", "dtype", "batch_size", "versions", "speedup"):
        assert key in d, key
    assert d["runtime"] == "eager" and d["dtype"] == "fp32" and d["batch_size"] == 4 and d["image_size"] == 16 and d["device"]["type"] == "cpu"
    assert set(d["versions"]) >= {"torch", "transformers", "hf_sparsify", "python"}
    assert d["macs"] == MacsCost().total(pruned) and d["baseline"]["macs"] == MacsCost().total(dense)
    assert d["params"] == count_params(pruned) and d["baseline"]["params"] == count_params(dense)
    assert d["repeats"] == d["baseline"]["repeats"] >= 3  # same interleaved rounds
    assert d["speedup"] == pytest.approx(d["baseline"]["median_ms"] / d["median_ms"], rel=1e-3)
    assert d["macs_ratio"] == pytest.approx(d["baseline"]["macs"] / d["macs"], rel=1e-3)
    assert d["throughput_images_per_s"] == pytest.approx(4 / (d["median_ms"] / 1e3), rel=1e-3)
    assert d["p10_ms"] <= d["median_ms"] <= d["p90_ms"]
    entry = result.card_entry()
    assert entry["runtime"] == "eager" and entry["speedup"] == pytest.approx(result.speedup, rel=1e-3) and "MACs ratio" in entry["notes"]


def test_a_run_without_baseline_has_no_ratio_and_no_card_row(dense_and_pruned):
    result = benchmark(dense_and_pruned[1], rule=QUICK)
    assert result.speedup is None and "speedup" not in result.to_dict() and result.batch_size == 1
    with pytest.raises(BaselineMismatchError, match="no baseline"):
        result.card_entry()
    with pytest.raises(BaselineMismatchError, match="no baseline"):
        card_entry_from_dict({"median_ms": 1.0})


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_the_cpu_leaves_the_given_models_untouched(dtype, dense_and_pruned):
    dense, pruned = dense_and_pruned
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    result = benchmark(pruned, baseline=dense, dtype=dtype, batch_size=2, rule=QUICK)
    assert result.dtype == dtype and result.speedup > 0
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    assert next(dense.parameters()).dtype == torch.float32


def test_another_input_size_and_a_folder(dense_and_pruned, tmp_path):
    dense, pruned = dense_and_pruned
    pruned.save_pretrained(tmp_path / "p")
    result = benchmark(tmp_path / "p", image_size=24, rule=QUICK)
    assert result.image_size == 24 and result.macs == model_macs(pruned, 24)["total"] > model_macs(pruned)["total"]
    assert result.model == str(tmp_path / "p")


def test_onnxruntime_runtime_times_the_exported_graphs(dense_and_pruned):
    dense, pruned = dense_and_pruned
    pytest.importorskip("onnxruntime")
    result = benchmark(pruned, baseline=dense, runtime="onnxruntime", batch_size=2, rule=QUICK)
    assert result.runtime == "onnxruntime" and result.speedup > 0 and "onnxruntime" in result.versions


@pytest.mark.slow
def test_compile_runtime(dense_and_pruned):
    try:
        check_runtime("compile")
    except RuntimeUnavailableError as err:
        pytest.skip(str(err))
    result = benchmark(dense_and_pruned[1], runtime="compile", batch_size=2, rule=QUICK)
    assert result.runtime == "compile" and result.timing["median_ms"] > 0


def test_unstructured_sparsity_shows_in_effective_macs_only():
    model = make_tiny_model("deit")
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
    result = benchmark(pruned, baseline=model, rule=QUICK)
    assert result.macs_ratio == 1.0 and result.effective_macs < result.macs


# ------------------------------------------------------------------------------------------------ errors
def test_a_baseline_of_another_architecture_or_input_size_is_refused(dense_and_pruned):
    pruned = dense_and_pruned[1]
    with pytest.raises(BaselineMismatchError, match="the baseline is a DeiTForImageClassification \\(deit\\) and the model a ViTForImageClassification"):
        benchmark(pruned, baseline=make_tiny_model("deit"), rule=QUICK)
    with pytest.raises(BaselineMismatchError, match="images of 32 px and the model 3-channel images of 16 px"):
        benchmark(pruned, baseline=make_tiny_model("vit", image_size=32), rule=QUICK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_runtimes_and_devices_this_machine_lacks_are_refused(dense_and_pruned):
    pruned = dense_and_pruned[1]
    with pytest.raises(SpeedInputError, match="no CUDA GPU is available here"):
        benchmark(pruned, device="cuda")
    with pytest.raises(RuntimeUnavailableError, match="semi-structured: 2:4 semi-structured kernels need an NVIDIA GPU"):
        benchmark(pruned, runtime="semi-structured", dtype="fp16")
    with pytest.raises(RuntimeUnavailableError, match="CPU provider has no fp16 kernels"):
        benchmark(pruned, runtime="onnxruntime", dtype="fp16")
    with pytest.raises(RuntimeUnavailableError, match="not one of eager, compile, onnxruntime, semi-structured"):
        benchmark(pruned, runtime="tensorrt")
    with pytest.raises(SpeedInputError, match="not one of fp32, fp16, bf16"):
        benchmark(pruned, dtype="int8")


def test_compile_without_a_compiler_is_refused(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeUnavailableError, match="needs a C\\+\\+ compiler"):
        check_runtime("compile", "cpu", "fp32")


def test_onnxruntime_missing_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(RuntimeUnavailableError, match='needs onnxruntime: pip install "hf_sparsify\\[onnx\\]"'):
        check_runtime("onnxruntime")
