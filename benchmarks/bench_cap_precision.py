"""Precision trade-offs of CAP: issue 12.3's random tiny ViT at the default damp (float32 vs float64 blocks, CAP and
WoodFisher), then the trained tiny ViT (CIFAR-10, ../shared): float64 (default) vs float32 Fisher blocks, and bf16
autocast of the gradient forward pass vs fp32.

    python benchmarks/bench_cap_precision.py [--num-grads 256] [--block 48] [--limit 2000]

For each variant: mask agreement with the float64 default, the largest relative weight difference, the
relative Frobenius difference of the Fisher sums (for bf16), and top-1 on a seeded random test subset.
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
from hf_sparsify import CAPConfig, WoodFisherConfig  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import CalibrationData  # noqa: E402
from hf_sparsify.evaluation import evaluate_model  # noqa: E402
from hf_sparsify.observers.fisher import BlockLayout, FisherTarget, collect_fisher  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def compare(a, b) -> dict:
    la, lb = get_adapter(a).prunable_layers(), get_adapter(b).prunable_layers()
    total = sum(l.numel for l in la)
    agree = sum(int(((x.weight == 0) == (y.weight == 0)).sum()) for x, y in zip(la, lb))
    rel = max(float((x.weight - y.weight).detach().abs().max() / y.weight.detach().abs().max()) for x, y in zip(la, lb))
    return {"mask_agreement": round(agree / total, 6), "masks_differing": total - agree, "max_rel_weight_diff": rel}


def issue_case(threads: int) -> list[dict]:
    """Issue 12.3's case: a random tiny ViT (16,384 weights), 64 gradients of 8 random images, the default
    damp=1e-8 and B = 192 (256 from the divisor rule): float32 blocks vs float64 blocks, CAP and WoodFisher."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(
        transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10)
    ).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(8, 3, 32, 32, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)} for _ in range(64)]
    rows = []
    for cls in (CAPConfig, WoodFisherConfig):
        config = cls(sparsity=0.5, num_grads=64)
        timings = {}
        pruned = {}
        for dtype in ("float64", "float32"):
            start = time.perf_counter()
            pruned[dtype] = hf_sparsify.prune(model, config.replace(fisher_dtype=dtype), batches, disable_tqdm=True)
            timings[dtype] = round(time.perf_counter() - start, 2)
        rows.append({"variant": f"issue 12.3 case, {config.method}: float32 vs float64 blocks", **compare(pruned["float32"], pruned["float64"]), "seconds": timings})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-grads", type=int, default=256)
    parser.add_argument("--block", type=int, default=48)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    for row in issue_case(args.threads):
        print(json.dumps(row), flush=True)
    model_dir = SHARED / "models" / "vit-tiny-cifar10"
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    train = hf_sparsify.load_image_dataset(SHARED / "data" / "cifar10", "train")
    test = hf_sparsify.load_image_dataset(SHARED / "data" / "cifar10", "test")
    base = CAPConfig(sparsity=args.sparsity, fisher_block_size=args.block, num_grads=args.num_grads, grad_batch_size=32)

    def run(config):
        pruned = hf_sparsify.prune(model, config, train, image_processor=processor, disable_tqdm=True)
        accuracy = evaluate_model(pruned, test, image_processor=processor, limit=args.limit, seed=0, disable_tqdm=True)["accuracy"]
        return pruned, accuracy

    reference, ref_acc = run(base)
    rows = [{"variant": "float64 Fisher blocks (default)", "accuracy": ref_acc, "phases": reference.pruning_result.timings}]
    single, acc = run(base.replace(fisher_dtype="float32"))
    rows.append({"variant": "float32 Fisher blocks", "accuracy": acc, **compare(single, reference), "phases": single.pruning_result.timings})
    bf16, acc = run(base.replace(mixed_precision="bf16"))
    rows.append({"variant": "float64 Fisher, bf16 autocast gradients", "accuracy": acc, **compare(bf16, reference), "phases": bf16.pruning_result.timings})

    # the Fisher sums themselves, fp32 vs bf16 gradients, on the same batches
    layers = get_adapter(model).prunable_layers()
    targets = [FisherTarget(l.name, l.weight, BlockLayout.for_weight(l.weight, args.block)) for l in layers]
    calibration = CalibrationData.from_source(train, model=model, image_processor=processor, batch_size=32, seed=0)
    batches = list(calibration.iter_batches(min(args.num_grads, 64)))
    fp32 = collect_fisher(model, targets, batches, dtype=torch.float64)
    half = collect_fisher(model, targets, batches, dtype=torch.float64, mixed_precision="bf16")
    num = sum(float(torch.linalg.vector_norm(fp32.sums[t.name] - half.sums[t.name]) ** 2) for t in targets)
    den = sum(float(torch.linalg.vector_norm(fp32.sums[t.name]) ** 2) for t in targets)
    rows.append({"variant": "Fisher sums: bf16 vs fp32 gradients (64 batches)", "relative_frobenius_diff": (num / den) ** 0.5})
    for row in rows:
        if "phases" in row:
            row["phases"] = {k: round(v, 2) for k, v in row["phases"].items()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
