"""SOSP's cost: saliency wall time against one gradient pass on the same data, and SOSP-I's time and memory as the
number of structures S grows.

1. ``--part ratio`` (default part of ``all``): on the bundled ViT, ``--images`` calibration images in batches of 32,
   alternating ``--repeats`` times: one plain gradient pass (forward + backward to every parameter, what a first-order
   importance such as Taylor costs), SOSP-H's curvature pass (exact Hessian-vector product; Gauss–Newton product),
   SOSP-I's (the S × S Gauss–Newton matrix). Medians and their ratios to the gradient pass.
2. ``--part scaling``: SOSP-I's curvature pass on ViTs of random weights whose S (MLP neurons + heads) grows, each in
   a fresh process (its peak resident memory from ``getrusage``): the S × S matrix, the seconds, the peak memory.
   S = 18,504 is DeiT-S's count (12 blocks × (1,536 neurons + 6 heads)); ``--largest`` adds ViT-B's 37,008.

    python benchmarks/bench_sosp_cost.py [--part all|ratio|scaling] [--images 512] [--scaling-images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_sparsify  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.assets import DEMO_MODEL_DIR, demo_dataset  # noqa: E402
from hf_sparsify.data import CalibrationData  # noqa: E402
from hf_sparsify.methods.sosp.pruner import SOSPPruner  # noqa: E402
from hf_sparsify.observers.gradients import GradientObserver, run_gradients  # noqa: E402

# (blocks, MLP width, heads) of the scaling runs; hidden size 48 × heads / 4 keeps head_dim 12
SCALING = [(4, 192, 4), (4, 768, 4), (12, 768, 12), (12, 1536, 6)]
LARGEST = (12, 3072, 12)


class ParameterGradients(GradientObserver):
    """One plain gradient of the loss w.r.t. every parameter per batch (summed, as a first-order method would)."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        self.total = [torch.zeros_like(p) for p in self.params]

    def leaves(self):
        return self.params

    def observe(self, step):
        for total, grad in zip(self.total, step.grad(self.params)):
            total += grad


def _calibration(images: int) -> CalibrationData:
    model = transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR)
    processor = transformers.AutoImageProcessor.from_pretrained(DEMO_MODEL_DIR)
    return CalibrationData.from_source(demo_dataset("calibration"), model=model, image_processor=processor, batch_size=32, num_samples=images, needs_labels=True)


def _materialised(data: CalibrationData) -> list[dict]:
    return [batch for batch in data]


def _curvature_seconds(model, config, batches) -> float:
    pruner = SOSPPruner(config)
    groups = pruner.select(get_adapter(model))
    data = CalibrationData.from_source(batches, batch_size=32, num_samples=config.calibration_images(), needs_labels=config.needs_labels())
    start = time.perf_counter()
    pruner.curvature(model, groups, data, device=torch.device("cpu"), disable_tqdm=True, timings={})
    return time.perf_counter() - start


def part_ratio(images: int, repeats: int) -> None:
    model = transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR).eval()
    batches = _materialised(_calibration(images))  # preprocessed once: the timings compare the passes, not the decoding
    runs = {
        "gradient pass (every parameter)": lambda: run_gradients(model, batches, ParameterGradients(model), loss="labels"),
        "SOSP-H exact (gradient + Hessian-vector product)": lambda: _curvature_seconds(model, hf_sparsify.SOSPHConfig(num_calibration_samples=images), batches),
        "SOSP-H Gauss–Newton (gradient + Gauss–Newton-vector product)": lambda: _curvature_seconds(
            model, hf_sparsify.SOSPHConfig(num_calibration_samples=images, hessian="gauss_newton"), batches
        ),
        "SOSP-I (gradient + S × S Gauss–Newton matrix)": lambda: _curvature_seconds(model, hf_sparsify.SOSPIConfig(num_calibration_samples=images), batches),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            load.append(os.getloadavg()[0])
    base = statistics.median(times["gradient pass (every parameter)"])
    print(f"\nbundled ViT ({sum(p.numel() for p in model.parameters()):,} parameters, S = 784), {images} images in batches of 32, "
          f"{torch.get_num_threads()} threads, {repeats} alternating repeats, load average {min(load):.2f}–{max(load):.2f}")  # fmt: skip
    print("| pass | median s | min s | × gradient pass |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {statistics.median(values) / base:.2f}× |")
    print(json.dumps({"ratio": {k: v for k, v in times.items()}, "load": load}))


def scaling_child(blocks: int, width: int, heads: int, images: int) -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=12 * heads, num_hidden_layers=blocks, num_attention_heads=heads, intermediate_size=width, image_size=32, patch_size=4, num_labels=10)
    model = transformers.ViTForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(32, 3, 32, 32, generator=generator), "labels": torch.randint(0, 10, (32,), generator=generator)} for _ in range(images // 32)]
    size = blocks * (width + heads)
    seconds = _curvature_seconds(model, hf_sparsify.SOSPIConfig(num_calibration_samples=images), batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"blocks": blocks, "width": width, "heads": heads, "structures": size, "matrix_bytes": size * size * 4, "seconds": seconds, "peak_rss_bytes": peak}))


def part_scaling(images: int, largest: bool) -> None:
    rows = []
    for blocks, width, heads in SCALING + ([LARGEST] if largest else []):
        load = os.getloadavg()[0]
        out = subprocess.run(
            [sys.executable, __file__, "--part", "child", "--child", f"{blocks},{width},{heads}", "--scaling-images", str(images)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        if out.returncode != 0:
            print(out.stderr[-2000:])
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["load"] = load
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nSOSP-I curvature pass, {images} random images (batches of 32, 10 classes: 9 directions per image), random-weight ViTs, {torch.get_num_threads()} threads")
    print("| blocks × (MLP + heads) | S | S × S matrix (float32) | seconds | peak resident memory | load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['blocks']} × ({r['width']} + {r['heads']}) | {r['structures']:,} | {r['matrix_bytes'] / 2**20:,.1f} MiB | {r['seconds']:.1f} | "
              f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB | {r['load']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["all", "ratio", "scaling", "child"])
    parser.add_argument("--images", type=int, default=512, help="calibration images of the ratio part")
    parser.add_argument("--scaling-images", type=int, default=64, help="random images of each scaling run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--largest", action="store_true", help="also ViT-B's S = 37,008 (5.5 GB matrix)")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.part == "child":
        scaling_child(*map(int, args.child.split(",")), images=args.scaling_images)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}")
    if args.part in ("all", "ratio"):
        part_ratio(args.images, args.repeats)
    if args.part in ("all", "scaling"):
        part_scaling(args.scaling_images, args.largest)


if __name__ == "__main__":
    main()
