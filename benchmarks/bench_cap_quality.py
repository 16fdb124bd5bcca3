"""One-shot quality of magnitude, WoodFisher, FastCAP and CAP on the trained tiny ViT (CIFAR-10, ../shared).

    python benchmarks/bench_cap_quality.py [--levels 0.5,0.7,0.8] [--num-grads 1024] [--limit N] [--out table.json]

Calibration: gradients of mini-batches of 32 drawn at random (seed 0) from the 50,000-image train split.
Evaluation: the whole 10,000-image test split (or a seeded random subset with --limit). Global sparsity over the
adapter's 24 prunable layers (q/k/v/o, fc1, fc2) for magnitude, WoodFisher and CAP; FastCAP is uniform per layer
(as designed). Prints a markdown table and one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify import CAPConfig, FastCAPConfig, MagnitudeConfig, WoodFisherConfig  # noqa: E402
from hf_sparsify.evaluation import evaluate_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def configs(sparsity: float, num_grads: int, block: int, batch: int, woodfisher_damp: float) -> dict[str, hf_sparsify.PruningConfig]:
    fisher = dict(sparsity=sparsity, fisher_block_size=block, num_grads=num_grads, grad_batch_size=batch, seed=0)
    return {
        "magnitude": MagnitudeConfig(sparsity=sparsity, sparsity_distribution="global"),
        "woodfisher": WoodFisherConfig(**{**fisher, "damp": woodfisher_damp}),
        "fastcap": FastCAPConfig(**fisher),
        "cap": CAPConfig(**fisher),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="0.5,0.7,0.8")
    parser.add_argument("--methods", default="magnitude,woodfisher,fastcap,cap")
    parser.add_argument("--num-grads", type=int, default=1024)
    parser.add_argument("--block", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="evaluate on N random test images (default: all 10,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--woodfisher-damp", type=float, default=1e-8, help="WoodFisher's dampening (default: CAP's 1e-8)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model_dir = SHARED / "models" / "vit-tiny-cifar10"
    data_dir = SHARED / "data" / "cifar10"
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    train = hf_sparsify.load_image_dataset(data_dir, "train")
    test = hf_sparsify.load_image_dataset(data_dir, "test")

    def evaluate(m):
        return evaluate_model(m, test, image_processor=processor, limit=args.limit, seed=0, disable_tqdm=True)

    rows = [{"method": "dense", "sparsity": 0.0, **evaluate(model)}]
    print(json.dumps(rows[0]), flush=True)
    for level in [float(x) for x in args.levels.split(",")]:
        for name, config in configs(level, args.num_grads, args.block, args.batch_size, args.woodfisher_damp).items():
            if name not in args.methods.split(","):
                continue
            start = time.perf_counter()
            calibration = None if name == "magnitude" else train
            pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor, disable_tqdm=True)
            seconds = time.perf_counter() - start
            row = {"method": name, "sparsity": level, **evaluate(pruned), "prune_seconds": round(seconds, 1), "achieved": round(hf_sparsify.sparsity_report(pruned).sparsity, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    levels = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    methods = [m for m in args.methods.split(",")]
    print("\n| method | " + " | ".join(f"{int(l * 100)}%" for l in levels) + " |")
    print("|---|" + "---|" * len(levels))
    print(f"| dense | {rows[0]['accuracy'] * 100:.2f}% (0%) |" + " |" * (len(levels) - 1))
    for m in methods:
        cells = [next((f"{r['accuracy'] * 100:.2f}%" for r in rows if r["method"] == m and r["sparsity"] == l), "") for l in levels]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
