"""VBP speed: a DeiT-Base-sized model (hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, random weights) pruned
to the paper's setting (35% of the MACs removed), dense vs pruned latency.

* CPU: batch 8, fp32 (``--cpu-batch``), median of ``--repeats`` timed forwards after warm-up, dense and pruned
  alternated so that load changes hit both; the load average is printed with the figure.
* CUDA (when present): batch 64, fp16 (``--gpu-batch``), CUDA-event timing; otherwise the GPU row says
  "not measured".

Also prints MACs and parameter counts before and after, and checks that the pruned model reloads from
``save_pretrained`` with identical logits.

    python benchmarks/bench_vbp_speed.py [--target 0.35] [--repeats 10] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import transformers

import hf_sparsify
from hf_sparsify.structured import MacsCost, count_params


def deit_base(seed: int = 0):
    config = transformers.DeiTConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16, num_labels=1000
    )
    torch.manual_seed(seed)
    return transformers.DeiTForImageClassification(config).eval()


def calibration_batches(num_images: int, batch_size: int, seed: int = 0):
    """Random images: the model has random weights, so the statistics only need to be plausible."""
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(batch_size, 3, 224, 224, generator=g)} for _ in range(num_images // batch_size)]


@torch.inference_mode()
def time_cpu(models: dict[str, torch.nn.Module], batch: int, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    x = torch.randn(batch, 3, 224, 224)
    times = {name: [] for name in models}
    for _ in range(warmup):
        for model in models.values():
            model(pixel_values=x)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(pixel_values=x)
            times[name].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def time_cuda(models: dict[str, torch.nn.Module], batch: int, repeats: int, warmup: int = 10) -> dict[str, list[float]]:
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    gpu = {name: model.to("cuda", torch.float16) for name, model in models.items()}
    for _ in range(warmup):
        for model in gpu.values():
            model(pixel_values=x)
    torch.cuda.synchronize()
    times = {name: [] for name in gpu}
    for _ in range(repeats):
        for name, model in gpu.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(pixel_values=x)
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / 1000)
    for model in gpu.values():
        model.to("cpu", torch.float32)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.35, help="fraction of MACs removed")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--cpu-batch", type=int, default=8)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--gpu-repeats", type=int, default=50)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    dense = deit_base()
    start = time.perf_counter()
    pruned = hf_sparsify.prune(dense, hf_sparsify.VBPConfig(target_macs_reduction=args.target), calibration_batches(args.calibration_images, 8), disable_tqdm=True)
    prune_seconds = time.perf_counter() - start
    macs = {"dense": int(MacsCost().total(dense)), "pruned": int(MacsCost().total(pruned))}
    params = {"dense": count_params(dense), "pruned": count_params(pruned)}
    widths = [layer["width"] for layer in pruned.pruning_result.layers.values()]

    with tempfile.TemporaryDirectory() as tmp:
        pruned.save_pretrained(tmp)
        reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp).eval()
        x = torch.randn(2, 3, 224, 224)
        with torch.inference_mode():
            identical = torch.equal(reloaded(pixel_values=x).logits, pruned(pixel_values=x).logits)

    out = {
        "model": "DeiT-Base size (random weights), 224 px",
        "target_macs_reduction": args.target,
        "macs": macs,
        "macs_reduction": 1 - macs["pruned"] / macs["dense"],
        "params": params,
        "params_reduction": 1 - params["pruned"] / params["dense"],
        "mlp_widths": widths,
        "neurons_removed_fraction": pruned.pruning_result.info["neurons_removed_fraction"],
        "prune_seconds": round(prune_seconds, 1),
        "reload_identical_logits": identical,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    models = {"dense": dense, "pruned": pruned}
    if not args.skip_cpu:
        load_before = os.getloadavg()
        times = time_cpu(models, args.cpu_batch, args.repeats)
        load_after = os.getloadavg()
        med = {k: statistics.median(v) for k, v in times.items()}
        out["cpu"] = {
            "batch": args.cpu_batch,
            "dtype": "fp32",
            "threads": torch.get_num_threads(),
            "median_seconds": med,
            "min_seconds": {k: min(v) for k, v in times.items()},
            "speedup_median": med["dense"] / med["pruned"],
            "speedup_min": min(times["dense"]) / min(times["pruned"]),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    if torch.cuda.is_available():
        times = time_cuda(models, args.gpu_batch, args.gpu_repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["cuda"] = {
            "device": torch.cuda.get_device_name(),
            "batch": args.gpu_batch,
            "dtype": "fp16",
            "median_seconds": med,
            "speedup_median": med["dense"] / med["pruned"],
            "images_per_second": {k: args.gpu_batch / v for k, v in med.items()},
        }
    else:
        out["cuda"] = "not measured: no CUDA device on this machine"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
