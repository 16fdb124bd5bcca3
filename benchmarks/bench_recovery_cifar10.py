"""Recovery of the bundled tiny ViT on CIFAR-10 with SparseTrainer: dense, one-shot, recovered accuracy for CAP and
magnitude at 70% and 80% (one process of ``examples/finetune_cifar10.py`` per row).

Each row's ``results.json`` lands in ``OUTPUT/<method>-<sparsity>/``; this script prints one JSON line per row (with
the load average before and after) and a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_recovery_cifar10.py --epochs 2 [--rows cap:0.7,magnitude:0.7,cap:0.8,magnitude:0.8]
        [--reuse-pruned] [--output runs/recovery] [--sparsity-distribution global] [-- extra flags for the example]

``--reuse-pruned`` starts from ``OUTPUT/<method>-<sparsity>-oneshot/model`` when an earlier ``--epochs 0`` run
saved it (the row then reports the pruning time of that run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "finetune_cifar10.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="cap:0.7,magnitude:0.7,cap:0.8,magnitude:0.8")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--output", default="runs/recovery")
    parser.add_argument("--reuse-pruned", action="store_true")
    parser.add_argument(
        "--sparsity-distribution", default="global",
        help="passed to every row (the figures in RESULTS.md: global, CAP's default and magnitude's global ranking)",
    )
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to the example after --")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.output)
    rows = []
    for spec in args.rows.split(","):
        method, sparsity = spec.split(":")
        name = f"{method}-{float(sparsity):.2f}"
        command = [sys.executable, str(EXAMPLE), "--method", method, "--sparsity", sparsity, "--epochs", str(args.epochs),
                   "--sparsity-distribution", args.sparsity_distribution, "--output-dir", str(out / name), *extra]
        pruned = out / f"{name}-oneshot"
        if args.reuse_pruned and (pruned / "model" / "config.json").is_file():
            command += ["--pruned-model", str(pruned / "model")]
        load_before = os.getloadavg()
        started = time.time()
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode != 0:
            print(json.dumps({"row": name, "error": done.returncode}), flush=True)
            continue
        results = json.loads((out / name / "results.json").read_text())
        if "pruned_model" in results and (pruned / "results.json").is_file():
            earlier = json.loads((pruned / "results.json").read_text())
            results["pruning_seconds"] = earlier.get("pruning_seconds")
            results["pruning_load"] = earlier.get("load")
        results["load"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
        results["wall_seconds"] = round(time.time() - started, 1)
        (out / name / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results), flush=True)
        rows.append(results)
    print("\n| method | sparsity | dense | one-shot | recovered | epochs | recovery time | pruning time | device |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = lambda key: f"{r[key]['accuracy']:.2%}" if key in r else "—"  # noqa: E731
        print(
            f"| {r['method']} | {r['sparsity']:.0%} | {acc('dense')} | {acc('one_shot')} | {acc('recovered')} | {r['epochs']:g} | "
            f"{r['train_seconds'] / 60:.1f} min | {(r.get('pruning_seconds') or 0) / 60:.1f} min | {r['device']} |"
        )


if __name__ == "__main__":
    main()
