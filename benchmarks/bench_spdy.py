"""SPDY's guarantee, measured on this CPU (one torch thread, eager, fp32).

Part ``deit``: a DeiT-Small-sized ViT with random weights (hidden 384, 12 blocks, 6 heads, MLP 1536, 224 px,
patch 16), batch 8. For each target (1.3×, 1.6×, 2.0× by default) SPDY (base ``sosp-h``: MLP neurons and heads,
label-free KL loss on random images; ``cost="latency"``) picks the widths from the profiler's per-block tables,
and the pruned model is timed against the dense one by ``hf_sparsify.benchmark`` in interleaved rounds (``--runtime``:
eager or ONNX Runtime, for the tables and the timing; ``--tables``: savings measured in the whole model or blocks
timed alone). One
database and one latency cache serve every target. Prints target, predicted and measured speed-ups.

Part ``vit``: the bundled trained ViT (CIFAR-10), batch ``--vit-batch``. SPDY (base ``vbp``, latency) at
``--vit-target``; then VBP with the same scores' ranking but one ratio in every MLP (``allocation="per_layer"``), the
ratio chosen as the smallest whose profiler-predicted speed-up reaches SPDY's predicted one; both timed against the
dense model in the same interleaved rounds, and evaluated (top-1) on ``--eval-limit`` CIFAR-10 test images.

Part ``unstructured``: the bundled trained ViT, per-layer sparsity levels (``cost="macs"``, the reference's grid of
``--levels-unstructured`` levels) from one pass of ``--bases`` (``cap``, ``magnitude``) at a MACs speed-up
``--unstructured-target``, against the same base method with one sparsity in every layer (``sparsity_distribution=
"uniform"``) chosen to give at least SPDY's counted MACs speed-up, and with its own global ranking at that sparsity
(``"global"``; every layer of the ViT sees the same tokens, so the same MACs); top-1 on ``--eval-limit`` CIFAR-10 test
images.
MACs are counted on the pruned models (dense ÷ non-zero): nothing on this CPU runs unstructured sparsity faster.

    python benchmarks/bench_spdy.py --part deit|vit|unstructured|all [--targets 1.3,1.6,2.0]
        [--tables in_context|isolated] [--runtime eager|onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.evaluation import evaluate_model  # noqa: E402
from hf_sparsify.speed import LatencyProfiler, benchmark  # noqa: E402
from hf_sparsify.structured import select_groups  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def deit_part(args, work: Path) -> list[dict]:
    config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224, patch_size=16, num_labels=1000)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    calibration = [{"pixel_values": torch.randn(8, 3, 224, 224)} for _ in range(args.deit_calibration // 8)]
    rows = []
    for target in args.targets:
        spdy = hf_sparsify.SPDYConfig(
            target_speedup=target, base_method="sosp-h", cost="latency", profile_batch_size=8, num_levels=args.levels,
            num_random_starts=args.random_starts, search_steps=args.search_steps, patience=args.patience,
            num_calibration_samples=args.deit_calibration, calibration_batch_size=8, database=str(work / "deit_db"),
            latency_cache=str(work / f"deit_latency_{args.runtime}.json"), speedup_corrections=args.corrections, seed=0,
            latency_tables=args.tables, profile_runtime=args.runtime,
        )  # fmt: skip
        before = loadavg()
        start = time.time()
        pruned = hf_sparsify.prune(model, spdy, calibration, disable_tqdm=True)
        info = pruned.pruning_result.info["spdy"]
        row = {
            "part": "deit",
            "target": target,
            "tables": args.tables,
            "runtime": args.runtime,
            "predicted": round(info["predicted_speedup"], 3),
            "measured": round(info["measured_speedup"], 3),
            "measured_paired": round(info["measured"]["speedup_paired"], 3),
            "dense_ms": round(info["measured"]["dense_ms"], 1),
            "pruned_ms": round(info["measured"]["pruned_ms"], 1),
            "stable": info["measured"]["stable"],
            "within_5pct": abs(info["measured_speedup"] / target - 1) <= 0.05,
            "corrections": [{k: round(v, 3) if isinstance(v, float) else v for k, v in c.items()} for c in info["corrections"]],
            "max_speedup": round(info["max_speedup"], 3),
            "uncontrolled_fraction": round(info["uncontrolled_fraction"], 3),
            "macs_reduction": round(pruned.pruning_result.info["macs_reduction"], 3),
            "evaluations": info["evaluations"],
            "database": info["database"],
            "seconds": round(time.time() - start, 1),
            "timings": {k: round(v, 1) for k, v in pruned.pruning_result.timings.items()},
            "loadavg_before": before,
            "loadavg_after": loadavg(),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bundled_vit(args):
    """The bundled trained ViT, its image processor, and the CIFAR-10 train and test splits."""
    model_dir = ROOT / "hf_sparsify" / "assets" / "vit-tiny-cifar10"
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    return model, processor, hf_sparsify.load_image_dataset(args.data, split="train"), hf_sparsify.load_image_dataset(args.data, split="test")


def vit_part(args, work: Path) -> list[dict]:
    model, processor, train, test = bundled_vit(args)
    before = loadavg()
    spdy_config = hf_sparsify.SPDYConfig(
        target_speedup=args.vit_target, base_method="vbp", cost="latency", profile_batch_size=args.vit_batch, num_levels=args.levels,
        num_random_starts=args.random_starts, search_steps=args.search_steps, patience=args.patience,
        num_calibration_samples=args.vit_calibration, latency_cache=str(work / "vit_latency.json"), measure_speedup=False, seed=0,
        latency_tables=args.tables,
    )  # fmt: skip
    spdy = hf_sparsify.prune(model, spdy_config, train, image_processor=processor, disable_tqdm=True)
    info = spdy.pruning_result.info["spdy"]
    # the uniform allocation: one VBP ratio in every MLP, the smallest whose predicted speed-up reaches SPDY's
    profiler = LatencyProfiler(batch_size=args.vit_batch, cache=str(work / "vit_latency.json"))
    groups = select_groups(get_adapter(model), ["mlp"])
    total = profiler.model_time(model)
    # uniform widths move in steps of 8: the two uniform allocations that bracket SPDY's predicted speed-up (the
    # slowest at least as fast, and the fastest slower one) are both pruned, timed and evaluated
    below = above = None
    for step in range(1, 100):
        ratio = step / 100
        candidate_widths = [max(8, round(g.num_units * (1 - ratio) / 8) * 8) for g in groups]
        if args.tables == "in_context":  # the same in-context tables SPDY used
            rows = profiler.group_times_in_context(model, groups, [[g.num_units, w] for g, w in zip(groups, candidate_widths)])
        else:
            rows = profiler.group_times(model, groups, [[g.num_units, w] for g, w in zip(groups, candidate_widths)])
        predicted = total / (total - sum(r[0] - r[1] for r in rows))
        if predicted >= info["predicted_speedup"]:
            above = (ratio, predicted)
            break
        if below is None or candidate_widths != below[2]:
            below = (ratio, predicted, candidate_widths)
    uniforms = []
    for ratio, predicted in ([(below[0], below[1])] if below else []) + [above]:
        uniform_config = hf_sparsify.VBPConfig(pruning_ratio=ratio, allocation="per_layer", num_calibration_samples=args.vit_calibration, seed=0)
        uniform = hf_sparsify.prune(model, uniform_config, train, image_processor=processor, disable_tqdm=True)
        uniforms.append((f"uniform (ratio {ratio:.2f})", uniform, predicted))
    timed = {"spdy": benchmark(spdy, baseline=model, batch_size=args.vit_batch)}
    for name, uniform, _ in uniforms:
        timed[name] = benchmark(uniform, baseline=model, batch_size=args.vit_batch)
    dense_eval = evaluate_model(model, test, image_processor=processor, limit=args.eval_limit, disable_tqdm=True)
    rows = []
    for name, pruned, predicted in [("spdy", spdy, info["predicted_speedup"])] + uniforms:
        timed_one = timed[name]
        evaluation = evaluate_model(pruned, test, image_processor=processor, limit=args.eval_limit, disable_tqdm=True)
        widths = [r["width"] for r in pruned.pruning_result.layers.values()]
        row = {
            "part": "vit",
            "allocation": name,
            "tables": args.tables,
            "target": args.vit_target,
            "predicted": round(predicted, 3),
            "measured": round(timed_one.speedup, 3),
            "measured_paired": round(timed_one.speedup_paired, 3),
            "stable": timed_one.stable,
            "macs_reduction": round(pruned.pruning_result.info["macs_reduction"], 3),
            "widths": widths,
            "top1": round(evaluation["accuracy"], 4),
            "dense_top1": round(dense_eval["accuracy"], 4),
            "eval_images": evaluation["num_samples"],
            "loadavg_before": before,
            "loadavg_after": loadavg(),
        }
        if name == "spdy":
            row.update(calibration_loss=round(info["calibration_loss"], 4), c1_loss=round(info["uniform_coefficients_loss"], 4), uncontrolled_fraction=round(info["uncontrolled_fraction"], 3))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _macs_speedup(model) -> float:
    from hf_sparsify.structured import attention_query_modules, count_macs

    counted = count_macs(model, attention_query_modules(get_adapter(model)))
    return counted["total"] / counted["effective"]


def unstructured_part(args, work: Path) -> list[dict]:
    model, processor, train, test = bundled_vit(args)
    dense_eval = evaluate_model(model, test, image_processor=processor, limit=args.eval_limit, disable_tqdm=True)
    batch = args.unstructured_batch
    base_settings = {"cap": {"fisher_block_size": args.fisher_block_size}, "magnitude": {}}
    rows = []
    for base in args.bases:
        before = loadavg()
        start = time.time()
        config = hf_sparsify.SPDYConfig(
            target_speedup=args.unstructured_target, base_method=base, cost="macs", num_levels=args.levels_unstructured,
            base_settings=base_settings[base] or None, num_random_starts=args.random_starts, search_steps=args.search_steps,
            patience=args.patience, num_calibration_samples=args.vit_calibration, calibration_batch_size=batch,
            database=str(work / f"levels_{base}"), seed=0,
        )  # fmt: skip
        spdy = hf_sparsify.prune(model, config, train, image_processor=processor, disable_tqdm=True)
        spdy_seconds = time.time() - start
        info = spdy.pruning_result.info["spdy"]
        # uniform: one sparsity in every layer, the smallest (0.001 steps) whose counted MACs speed-up reaches SPDY's
        dense_macs = info["dense_cost"] - info["uncontrolled_cost"]
        needed = 1 - (info["dense_cost"] / info["measured_speedup"] - info["uncontrolled_cost"]) / dense_macs
        sparsity = min(0.999, math.ceil(needed * 1000) / 1000)
        candidates = [(f"spdy ({base})", spdy, spdy_seconds)]
        for distribution in ("uniform", "global"):  # global: the base method's own allocation at the same sparsity
            if base == "cap":
                baseline_config = hf_sparsify.CAPConfig(
                    sparsity=sparsity, sparsity_distribution=distribution, num_calibration_samples=args.vit_calibration, calibration_batch_size=batch, seed=0,
                    **base_settings[base],
                )  # fmt: skip
            else:
                baseline_config = hf_sparsify.MagnitudeConfig(sparsity=sparsity, sparsity_distribution=distribution)
            start = time.time()
            baseline = hf_sparsify.prune(model, baseline_config, train if base == "cap" else None, image_processor=processor, disable_tqdm=True)
            candidates.append((f"{distribution} {base} (sparsity {sparsity:.3f})", baseline, time.time() - start))
        for name, pruned, seconds in candidates:
            evaluation = evaluate_model(pruned, test, image_processor=processor, limit=args.eval_limit, disable_tqdm=True)
            row = {
                "part": "unstructured",
                "allocation": name,
                "target": args.unstructured_target,
                "macs_speedup": round(_macs_speedup(pruned), 3),
                "sparsity": round(hf_sparsify.sparsity_report(pruned).sparsity, 4),
                "top1": round(evaluation["accuracy"], 4),
                "dense_top1": round(dense_eval["accuracy"], 4),
                "eval_images": evaluation["num_samples"],
                "prune_seconds": round(seconds, 1),
                "loadavg_before": before,
                "loadavg_after": loadavg(),
            }
            if name.startswith("spdy"):
                row.update(
                    predicted=round(info["predicted_speedup"], 3), calibration_loss=round(info["calibration_loss"], 4), c1_loss=round(info["uniform_coefficients_loss"], 4),
                    evaluations=info["evaluations"], layer_sparsities=[round(r["sparsity"], 3) for r in info["profile"]],
                )  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("deit", "vit", "unstructured", "all"), default="all")
    parser.add_argument("--targets", default="1.3,1.6,2.0")
    parser.add_argument("--levels", type=int, default=12)
    parser.add_argument("--random-starts", type=int, default=10)
    parser.add_argument("--search-steps", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--deit-calibration", type=int, default=16)
    parser.add_argument("--corrections", type=int, default=5, help="SPDY's speedup_corrections for the DeiT part (0: the block tables' prediction only)")
    parser.add_argument("--tables", choices=("in_context", "isolated"), default="in_context", help="SPDY's latency_tables (both parts; the vit part's uniform baseline is predicted from the same kind of table)")
    parser.add_argument("--runtime", choices=("eager", "onnxruntime", "compile"), default="eager", help="SPDY's profile_runtime for the DeiT part (tables and the final timing)")
    parser.add_argument("--vit-target", type=float, default=1.3)
    parser.add_argument("--vit-batch", type=int, default=64)
    parser.add_argument("--vit-calibration", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=2000)
    parser.add_argument("--unstructured-target", type=float, default=2.0, help="MACs speed-up of the unstructured part")
    parser.add_argument("--levels-unstructured", type=int, default=42, help="levels per layer of the unstructured part (the reference: 42)")
    parser.add_argument("--bases", default="cap,magnitude", help="base methods of the unstructured part")
    parser.add_argument("--unstructured-batch", type=int, default=8, help="calibration batch of the unstructured part (CAP: images per gradient)")
    parser.add_argument("--fisher-block-size", type=int, default=48, help="CAP's fisher_block_size in the unstructured part")
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "cifar10"))
    parser.add_argument("--work", default=None, help="folder for the databases and latency caches (default: a temporary one)")
    args = parser.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]
    args.bases = [b for b in args.bases.split(",") if b]
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, load {loadavg()}", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_spdy_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("deit", "all"):
        deit_part(args, work)
    if args.part in ("vit", "all"):
        vit_part(args, work)
    if args.part in ("unstructured", "all"):
        unstructured_part(args, work)


if __name__ == "__main__":
    main()
