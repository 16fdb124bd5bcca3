"""CAP / FastCAP on one GPU at DeiT-Small and ViT-Large size (random weights, random 224 px images).

    # DeiT-Small size (hidden 384, 12 layers, 6 heads): total CAP time and peak memory, plus the reference
    # algorithm's Fisher + elimination timed on a few layers and extrapolated by weight count
    python benchmarks/bench_cap_gpu.py --size deit-small --methods cap --reference-layers 2
    # ViT-Large size (hidden 1024, 24 layers, 302M prunable weights): FastCAP, and CAP with layer streaming
    python benchmarks/bench_cap_gpu.py --size vit-large --methods fastcap,cap --max-fisher-memory-gb 40 --distribution uniform

Defaults: B=192, 1024 gradients of batch 64, sparsity 0.5. Prints one JSON object per method. Needs CUDA.
CAP at ViT-Large size stores d·B floats of Fisher blocks: 302M·256·4 B ≈ 310 GB (the divisor rule turns 192 into
256 for the 2^20- and 2^22-weight layers), more than one GPU or the 128 GB host of the lent machine holds, so it
runs with ``max_fisher_memory_gb`` (layer streaming: one gradient pass per group of layers, and a second one per
group for a global distribution); CPU offload of all blocks (``fisher_device="cpu"``) cannot fit in 128 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify import CAPConfig, FastCAPConfig  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.observers.fisher import BlockLayout  # noqa: E402

import cap_reference  # noqa: E402

SIZES = {
    "deit-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # a smoke-test size, to check the script on a CPU (--device cpu --size tiny --num-grads 8 --batch 4)
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


class RandomImages:
    """Re-iterable random batches (the same on every pass), generated on the fly on the GPU."""

    def __init__(self, num_batches: int, batch: int, size: int = 224, num_labels: int = 1000, device: str = "cuda"):
        self.num_batches, self.batch, self.size, self.num_labels, self.device = num_batches, batch, size, num_labels, device

    def __iter__(self):
        generator = torch.Generator(device=self.device).manual_seed(0)
        for _ in range(self.num_batches):
            yield {
                "pixel_values": torch.randn(self.batch, 3, self.size, self.size, generator=generator, device=self.device),
                "labels": torch.randint(0, self.num_labels, (self.batch,), generator=generator, device=self.device),
            }


def reference_timing(model, num_grads: int, block: int, damp: float, num_layers: int, device: str) -> dict:
    """Sherman–Morrison per gradient + elimination with CPU traces on the first ``num_layers`` prunable layers
    (random gradients: only the time matters), extrapolated by weight count."""
    layers = get_adapter(model).prunable_layers()
    subset = layers[:num_layers]
    total_weights = sum(l.numel for l in layers)
    start = time.perf_counter()
    for layer in subset:
        layout = BlockLayout.for_weight(layer.weight, block)
        n = layout.num_blocks
        finv = (torch.eye(layout.block_size, device=device) / damp).repeat(n, 1, 1)
        for _ in range(num_grads):
            g = torch.randn(n, layout.block_size, device=device) * 1e-3
            u = torch.bmm(finv, g.unsqueeze(-1)).squeeze(-1)
            finv -= u.unsqueeze(2) * u.unsqueeze(1) / (num_grads + (g * u).sum(1))[:, None, None]
        cap_reference.eliminate_with_traces(layout.to_blocks(layer.weight.detach()), finv)
    _sync(device)
    seconds = time.perf_counter() - start
    subset_weights = sum(l.numel for l in subset)
    return {
        "reference_layers": [l.name for l in subset],
        "reference_subset_seconds": round(seconds, 2),
        "reference_extrapolated_seconds": round(seconds * total_weights / subset_weights, 1),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="deit-small")
    parser.add_argument("--methods", default="cap")
    parser.add_argument("--block", type=int, default=192)
    parser.add_argument("--num-grads", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--distribution", default="global")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--max-fisher-memory-gb", type=float, default=None)
    parser.add_argument("--reference-layers", type=int, default=0, help="time the reference algorithm on this many layers")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this benchmark needs a GPU"}))
        sys.exit(1)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    image_size = 32 if args.size == "tiny" else 224
    config = transformers.ViTConfig(image_size=image_size, patch_size=16, num_labels=1000, **SIZES[args.size])
    base = transformers.ViTForImageClassification(config).eval().to(args.device)
    data = RandomImages(args.num_grads, args.batch, size=image_size, device=args.device)
    prunable = sum(l.numel for l in get_adapter(base).prunable_layers())
    for method in args.methods.split(","):
        common = dict(sparsity=args.sparsity, fisher_block_size=args.block, num_grads=args.num_grads, mixed_precision=args.mixed_precision)
        if method == "fastcap":
            pruning = FastCAPConfig(**common)
        else:
            pruning = CAPConfig(**common, sparsity_distribution=args.distribution, max_fisher_memory_gb=args.max_fisher_memory_gb)
        model = transformers.ViTForImageClassification(config).eval().to(args.device)
        model.load_state_dict(base.state_dict())
        _sync(args.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pruned = hf_sparsify.prune(model, pruning, data, inplace=True, disable_tqdm=True)
        _sync(args.device)
        total = time.perf_counter() - start
        result = pruned.pruning_result
        timings = result.timings
        out = {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "size": args.size,
            "prunable_weights": prunable,
            "method": method,
            "config": {k: v for k, v in pruning.to_dict().items() if k in common or k in ("sparsity_distribution", "max_fisher_memory_gb", "damp")},
            "total_seconds": round(total, 1),
            "phases": {k: round(v, 2) for k, v in timings.items()},
            "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_gpu_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
            "fisher_groups": result.info.get("fisher_groups"),
            "gradient_passes": result.info.get("gradient_passes"),
            "sparsity": round(hf_sparsify.sparsity_report(pruned, compute_macs=False).sparsity, 4),
        }
        if method == "cap" and args.reference_layers:
            ours = sum(timings.get(k, 0.0) for k in ("fisher", "inverse", "elimination", "selection", "update"))
            ref = reference_timing(base, args.num_grads, args.block, pruning.damp, args.reference_layers, args.device)
            out.update(ref, ours_fisher_to_weights_seconds=round(ours, 2), speedup_fisher_to_weights=round(ref["reference_extrapolated_seconds"] / ours, 1))
        print(json.dumps(out), flush=True)
        del model, pruned
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
