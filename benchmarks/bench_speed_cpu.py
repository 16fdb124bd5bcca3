"""Measured CPU speed-up of VBP against the dense model, per runtime: a DeiT-Small-sized model (built from a ViT
config with DeiT-Small's sizes: hidden 384, 12 layers, 6 heads, MLP 1536, patch 16, 224 px; random weights, which
do not change the speed) pruned with VBP to −20%, −35% and −50% of its MACs, then timed in eager PyTorch,
torch.compile and ONNX Runtime.

For each runtime the dense model and the three pruned models are prepared once and timed **in the same interleaved
rounds** (hf_sparsify.speed.time_interleaved: warm-up, rotating order, stop when every median's 95% interval is
within ±2%, or after --max-seconds); each pruned model's figure is its ratio to the dense model of the same run and
runtime. The goal (issue 14): measured speed-up ≥ 85% of the MACs ratio.

    python benchmarks/bench_speed_cpu.py [--runtimes eager,compile,onnxruntime] [--batch 8] [--threads 2] [--max-seconds 300]
                                         [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch
import transformers

import hf_sparsify
from hf_sparsify.speed import TimingRule, check_runtime, prepare_model, time_interleaved
from hf_sparsify.speed.inputs import describe_device, library_versions
from hf_sparsify.speed.timing import paired_ratio
from hf_sparsify.adapters import get_adapter
from hf_sparsify.structured import MacsCost, count_params, select_groups


def deit_small(seed: int = 0) -> torch.nn.Module:
    config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224, patch_size=16, num_labels=1000)
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config).eval()


def calibration_batches(num_images: int, batch_size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(batch_size, 3, 224, 224, generator=g)} for _ in range(num_images // batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="0.2,0.35,0.5", help="fractions of MACs removed by VBP")
    parser.add_argument("--runtimes", default="eager,compile,onnxruntime")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--min-repeats", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--models-dir", help="save the pruned models here, and reuse them on later runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    dense = deit_small()
    macs_dense = MacsCost().total(dense)
    models = {"dense": dense}
    facts = {"dense": {"macs": int(macs_dense), "params": count_params(dense)}}
    batches = calibration_batches(args.calibration_images)
    for target in [float(t) for t in args.targets.split(",")]:
        start = time.perf_counter()
        name = f"vbp-{round(target * 100)}"
        saved = os.path.join(args.models_dir, name) if args.models_dir else None
        if saved and os.path.isdir(saved):  # pruned by an earlier run of this script (same seed and settings)
            pruned = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(saved).eval()
        else:
            pruned = hf_sparsify.prune(dense, hf_sparsify.VBPConfig(target_macs_reduction=target), batches, disable_tqdm=True)
            if saved:
                pruned.save_pretrained(saved, card=False)
        models[name] = pruned
        macs = MacsCost().total(pruned)
        facts[name] = {
            "target_macs_reduction": target,
            "macs": int(macs),
            "macs_reduction": round(1 - macs / macs_dense, 4),
            "macs_ratio": round(macs_dense / macs, 4),
            "params": count_params(pruned),
            "mlp_widths": [g.num_units for g in select_groups(get_adapter(pruned), ["mlp"])],
            "prune_seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps({name: facts[name]}), flush=True)

    out = {
        "model": "DeiT-Small size (ViTConfig hidden 384, 12 layers, 6 heads, MLP 1536, patch 16, 224 px; random weights)",
        "batch": args.batch,
        "dtype": "fp32",
        "device": describe_device(torch.device("cpu")),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": library_versions(onnxruntime=True),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": facts,
        "runtimes": {},
    }
    rule = TimingRule(min_repeats=args.min_repeats, max_seconds=args.max_seconds)
    for runtime in args.runtimes.split(","):
        try:
            check_runtime(runtime, "cpu", "fp32")
        except hf_sparsify.HfSparsifyError as err:
            out["runtimes"][runtime] = f"not measured: {err}"
            continue
        start = time.perf_counter()
        prepared = {name: prepare_model(model, runtime, batch_size=args.batch) for name, model in models.items()}
        prepare_seconds = time.perf_counter() - start
        load_before = os.getloadavg()
        start = time.perf_counter()
        try:
            timings = time_interleaved({name: p.run for name, p in prepared.items()}, rule)
        finally:
            for p in prepared.values():
                p.close()
        load_after = os.getloadavg()
        dense_timing = timings["dense"]
        row = {
            "prepare_seconds": round(prepare_seconds, 1),
            "timing_seconds": round(time.perf_counter() - start, 1),
            "rounds": dense_timing.repeats,
            "stable": all(t.stable(rule.precision) for t in timings.values()),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
            "median_ms": {name: round(t.median * 1e3, 2) for name, t in timings.items()},
            "spread": {name: round(t.spread, 3) for name, t in timings.items()},
            "speedup": {},
        }
        for name, timing in timings.items():
            if name == "dense":
                continue
            speedup = dense_timing.median / timing.median
            row["speedup"][name] = {
                "speedup": round(speedup, 3),
                "speedup_paired": round(paired_ratio(dense_timing, timing), 3),
                "macs_ratio": facts[name]["macs_ratio"],
                "fraction_of_macs_ratio": round(speedup / facts[name]["macs_ratio"], 3),
            }
        out["runtimes"][runtime] = row
        print(json.dumps({runtime: row}), flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
