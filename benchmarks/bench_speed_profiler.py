"""How well the per-layer latency profiler predicts a whole model: the sum of per-block times (each MLP timed
alone at its width) plus the time no block controls, against the measured pruned model (target: within 10%).

Model: DeiT-Small size (as benchmarks/bench_speed_cpu.py; random weights), VBP at −20/−35/−50% of the MACs
(per-layer MLP widths). The profiler (hf_sparsify.speed.LatencyProfiler) measures every MLP width the three pruned
models use (the 12 MLPs share one signature: each width is timed once), the dense model's time, and each pruned
model's time; predicted(pruned) = measured(dense) − Σ dense MLP times + Σ MLP times at the pruned widths.

Two measurements: (a) the profiler as a user runs it (blocks, then each whole model, one after the other: on a
machine whose load drifts, the whole-model times drift with it); (b) every measurement — the four whole models and
the MLP block at every width — in the same interleaved rounds, which isolates the error of the additive model
(Σ blocks + the rest) from the drift.

    python benchmarks/bench_speed_profiler.py [--runtime eager] [--batch 8] [--threads 2] [--cache FILE] [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import torch
import transformers

import hf_sparsify
from hf_sparsify.adapters import get_adapter
from hf_sparsify.speed import LatencyProfiler, TimingRule, prepare_model, prepare_module, time_interleaved
from hf_sparsify.speed.profiler import _shrunk_copy
from hf_sparsify.structured import select_groups

from bench_speed_cpu import calibration_batches, deit_small  # noqa: E402  (run from benchmarks/ or with it on the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="0.2,0.35,0.5")
    parser.add_argument("--runtime", default="eager")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", help="the profiler's cache file (default: in memory)")
    parser.add_argument("--model-max-seconds", type=float, default=120.0)
    parser.add_argument("--skip-interleaved", action="store_true", help="skip the check with every measurement in the same rounds")
    parser.add_argument("--interleaved-max-seconds", type=float, default=300.0)
    parser.add_argument("--models-dir", help="reuse the pruned models benchmarks/bench_speed_cpu.py --models-dir saved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    dense = deit_small()
    batches = calibration_batches(32)
    pruned = {}
    for t in [float(x) for x in args.targets.split(",")]:
        saved = os.path.join(args.models_dir, f"vbp-{round(t * 100)}") if args.models_dir else None
        if saved and os.path.isdir(saved):  # the models benchmarks/bench_speed_cpu.py --models-dir saved
            pruned[t] = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(saved).eval()
        else:
            pruned[t] = hf_sparsify.prune(dense, hf_sparsify.VBPConfig(target_macs_reduction=t), batches, disable_tqdm=True)
    groups = select_groups(get_adapter(dense), ["mlp"])
    widths = {t: [select_groups(get_adapter(m), ["mlp"])[i].num_units for i in range(len(groups))] for t, m in pruned.items()}

    profiler = LatencyProfiler(batch_size=args.batch, runtime=args.runtime, cache=args.cache, model_rule=TimingRule(max_seconds=args.model_max_seconds))
    load_before = os.getloadavg()
    start = time.perf_counter()
    every = sorted({w for ws in widths.values() for w in ws} | {groups[0].num_units}, reverse=True)
    tables = profiler.group_times(dense, groups, [every] * len(groups))
    block_seconds = time.perf_counter() - start
    dense_time = profiler.model_time(dense)
    dense_blocks = sum(row[0] for row in tables)
    uncontrolled = dense_time - dense_blocks
    rows = []
    for target, model in pruned.items():
        predicted = uncontrolled + sum(tables[i][every.index(w)] for i, w in enumerate(widths[target]))
        measured = profiler.model_time(model)
        rows.append(
            {
                "target": target,
                "mlp_widths": widths[target],
                "predicted_ms": round(predicted * 1e3, 2),
                "measured_ms": round(measured * 1e3, 2),
                "error": round(predicted / measured - 1, 4),
                "predicted_speedup": round(dense_time / predicted, 3),
                "measured_speedup": round(dense_time / measured, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    # (b) the same prediction with every measurement in the same interleaved rounds (the dense and pruned models and
    # the MLP block at every width): isolates the additive model's error from the machine's load drift
    interleaved = None
    if not args.skip_interleaved:
        work, captured = profiler._capture(dense, [groups[0].name])
        args_, kwargs_ = captured[groups[0].name]
        callables, prepared = {}, []
        for name, model in {"dense": dense, **{f"vbp-{round(t * 100)}": m for t, m in pruned.items()}}.items():
            p = prepare_model(model, args.runtime, batch_size=args.batch)
            prepared.append(p)
            callables[name] = p.run
        for w in every:
            p = prepare_module(_shrunk_copy(work.get_submodule(groups[0].name), groups[0], w), args_, kwargs_, args.runtime)
            prepared.append(p)
            callables[f"mlp-{w}"] = p.run
        load = os.getloadavg()
        try:
            t = time_interleaved(callables, TimingRule(min_repeats=10, max_seconds=args.interleaved_max_seconds))
        finally:
            for p in prepared:
                p.close()
        med = {k: v.median for k, v in t.items()}
        rest = med["dense"] - len(groups) * med[f"mlp-{groups[0].num_units}"]
        interleaved = {"rounds": t["dense"].repeats, "loadavg_before": [round(v, 2) for v in load], "loadavg_after": [round(v, 2) for v in os.getloadavg()], "dense_ms": round(med["dense"] * 1e3, 2), "uncontrolled_fraction": round(rest / med["dense"], 4), "rows": []}
        for target in pruned:
            name = f"vbp-{round(target * 100)}"
            predicted = rest + sum(med[f"mlp-{w}"] for w in widths[target])
            interleaved["rows"].append(
                {
                    "target": target,
                    "predicted_ms": round(predicted * 1e3, 2),
                    "measured_ms": round(med[name] * 1e3, 2),
                    "error": round(predicted / med[name] - 1, 4),
                    "predicted_speedup": round(med["dense"] / predicted, 3),
                    "measured_speedup": round(med["dense"] / med[name], 3),
                }
            )
            print(json.dumps({"interleaved": interleaved["rows"][-1]}), flush=True)

    out = {
        "model": "DeiT-Small size (random weights), 224 px",
        "runtime": args.runtime,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "widths_timed": len(every),
        "block_profiling_seconds": round(block_seconds, 1),
        "dense_ms": round(dense_time * 1e3, 2),
        "dense_mlp_blocks_ms": round(dense_blocks * 1e3, 2),
        "uncontrolled_ms": round(uncontrolled * 1e3, 2),
        "uncontrolled_fraction": round(uncontrolled / dense_time, 4),
        "mlp_time_per_width_ms": {w: round(tables[0][i] * 1e3, 3) for i, w in enumerate(every)},
        "rows": rows,
        "cache": str(profiler.cache_path) if profiler.cache_path else None,
        "interleaved": interleaved,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
