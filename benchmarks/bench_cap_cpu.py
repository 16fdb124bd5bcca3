"""CAP on CPU: the bundled tiny ViT (CIFAR-10), B=48, 256 gradients, total time on 2 cores; and the Fisher +
elimination phases against the reference algorithm (one Sherman–Morrison update per gradient, B+1 traces) on the
same gradients.

    python benchmarks/bench_cap_cpu.py [--threads 2] [--num-grads 256] [--block 48] [--batch-size 32]
        [--fisher-dtypes float64,float32 --rounds 3]

Prints one JSON object (per fisher_dtype variant, run interleaved over the rounds: medians). Calibration: the bundled 1,000-image CIFAR-10 train sample (or --data), drawn at random
with the config's seed; the model: hf_sparsify/assets/vit-tiny-cifar10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify import CAPConfig  # noqa: E402
from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import CalibrationData  # noqa: E402
from hf_sparsify.observers.fisher import BlockLayout  # noqa: E402

import cap_reference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-grads", type=int, default=256)
    parser.add_argument("--block", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--data", default=str(DEMO_DATA_DIR / "calibration.parquet"))
    parser.add_argument("--fisher-dtypes", default="float64", help="comma-separated fisher_dtype variants, run interleaved (default: the default, float64)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants (interleaved); medians are reported")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    model = transformers.AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(DEMO_MODEL_DIR)
    data = hf_sparsify.load_image_dataset(args.data, split="train")
    variants = args.fisher_dtypes.split(",")
    base = CAPConfig(sparsity=args.sparsity, fisher_block_size=args.block, num_grads=args.num_grads, grad_batch_size=args.batch_size)

    load = os.getloadavg()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    pruned_by_variant = {}
    for _ in range(args.rounds):
        for variant in variants:
            config = base.replace(fisher_dtype=variant)
            start = time.perf_counter()
            pruned = hf_sparsify.prune(model, config, data, image_processor=processor, disable_tqdm=True)
            total = time.perf_counter() - start
            timings = dict(pruned.pruning_result.timings)
            ours = timings["fisher"] + timings["inverse"] + timings["elimination"] + timings["selection"] + timings["update"]
            runs[variant].append({"total": total, "ours": ours, **timings})
            pruned_by_variant[variant] = pruned
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "load_average_before": [round(x, 2) for x in load],
        "config": {k: v for k, v in base.to_dict().items() if k in ("sparsity", "fisher_block_size", "num_grads", "grad_batch_size", "damp")},
        "rounds": args.rounds,
        "variants": {},
    }
    for variant, rows in runs.items():
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        phases = {k: round(v, 3) for k, v in median.items() if k not in ("total", "ours")}
        out["variants"][variant] = {
            "total_seconds": round(median["total"], 2),
            "phases": phases,
            "data_and_other_seconds": round(median["total"] - sum(v for k, v in median.items() if k not in ("total", "ours")), 2),
            "ours_fisher_to_weights_seconds": round(median["ours"], 3),
        }

    if not args.skip_reference:
        # the same gradients, collected into memory once (not timed), then the reference algorithm in each dtype
        layers = get_adapter(model).prunable_layers()
        calibration = CalibrationData.from_source(data, model=model, image_processor=processor, batch_size=base.effective_batch_size, seed=base.seed)
        grads = {layer.name: [] for layer in layers}
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers:
            layer.weight.requires_grad_(True)
        for batch in calibration.iter_batches(base.gradients):
            model.zero_grad()
            model(**batch).loss.backward()
            for layer in layers:
                grads[layer.name].append(layer.weight.grad.reshape(-1).clone())
        model.zero_grad()
        for variant in variants:
            dtype = getattr(torch, variant)
            start = time.perf_counter()
            results = []
            with torch.no_grad():
                for layer in layers:
                    layout = BlockLayout.for_weight(layer.weight, args.block)
                    finv = cap_reference.sherman_morrison_inverse(torch.stack(grads[layer.name]).to(dtype), layout.block_size, base.damp)
                    results.append(cap_reference.eliminate_with_traces(layout.to_blocks(layer.weight.detach()).to(dtype), finv))
                total_weights = sum(layer.numel for layer in layers)
                new = cap_reference.select_from_traces(results, round(args.sparsity * total_weights))
            reference = time.perf_counter() - start
            pruned = pruned_by_variant[variant]
            agree = sum(int(((n.reshape(l.weight.shape) == 0) == (pl.weight == 0)).sum()) for n, l, pl in zip(new, layers, get_adapter(pruned).prunable_layers()))
            entry = out["variants"][variant]
            entry["reference_fisher_to_weights_seconds"] = round(reference, 3)
            entry["speedup_fisher_to_weights"] = round(reference / entry["ours_fisher_to_weights_seconds"], 2)
            entry["mask_agreement_with_reference"] = round(agree / total_weights, 6)
            entry["trace_memory_reference_MiB"] = round(sum(t.numel() * t.element_size() for t, _ in results) / 2**20, 1)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
