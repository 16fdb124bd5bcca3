"""GPU speed figures of issue 14, as one short script for a lent GPU (each part's ratio is against the dense model
timed in the same interleaved rounds, CUDA-synchronised):

1. **VBP**: a DeiT-Base-sized model (hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, random weights) pruned
   with VBP to −35% of its MACs; batch 64, fp16; eager and torch.compile (and ONNX Runtime when
   onnxruntime-gpu is installed). Target ≥ 1.4× (the VBP paper's 1.44× on an H100).
2. **2:4**: a ViT-Base-sized model pruned with magnitude 2:4 (mask_structure="2:4"); batch 64, fp16:
   the whole model on 2:4 semi-structured kernels (torch.sparse.to_sparse_semi_structured) against the masked dense
   model on dense kernels, with the numerical check (largest relative difference of the logits); and **the linear
   layers alone**: every distinct nn.Linear shape of the model (q/k/v/o 768×768, fc1 3072×768, fc2 768×3072) at
   the model's rows (64 × 197 tokens), sparse against dense, summed over the model's 72 layers.

Without a CUDA device the script says "not measured" and exits; ``--device cpu --size tiny`` runs the code paths
that need no GPU (VBP in eager) as a check.

3. **SOSP-H** (issue 13): the same DeiT-Base-sized model pruned with SOSP-H (MLP neurons and heads, label-free
   ``loss="kl"``: the weights are random) to −35% of its MACs, timed as in 1.

    python benchmarks/bench_speed_gpu.py [--parts vbp,24,sosp] [--batch 64] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import transformers

import hf_sparsify
from hf_sparsify.speed import TimingRule, check_runtime, prepare_model, time_interleaved
from hf_sparsify.speed.inputs import describe_device, library_versions
from hf_sparsify.speed.semi_structured import compare_with_dense, to_semi_structured
from hf_sparsify.speed.timing import paired_ratio
from hf_sparsify.structured import MacsCost

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=64, patch_size=16),
}


def build(kind: str, size: str, seed: int = 0) -> torch.nn.Module:
    config_class, model_class = (transformers.DeiTConfig, transformers.DeiTForImageClassification) if kind == "deit" else (transformers.ViTConfig, transformers.ViTForImageClassification)
    torch.manual_seed(seed)
    return model_class(config_class(num_labels=1000, **SIZES[size])).eval()


def ratio_row(timings, names, rule) -> dict:
    dense = timings["dense"]
    row = {"median_ms": {k: round(t.median * 1e3, 3) for k, t in timings.items()}, "rounds": dense.repeats, "stable": all(t.stable(rule.precision) for t in timings.values())}
    for name in names:
        row[f"speedup_{name}"] = round(dense.median / timings[name].median, 3)
        row[f"speedup_{name}_paired"] = round(paired_ratio(dense, timings[name]), 3)
    return row


def part_vbp(args, device, dtype, rule, method: str = "vbp") -> dict:
    """VBP (or, with ``method="sosp-h"``, SOSP-H: MLP neurons and heads, label-free ``loss="kl"`` on the random
    weights, pruned on ``device``) at −35% of the MACs, timed against the dense model."""
    dense = build("deit", args.size)
    size = SIZES[args.size]["image_size"]
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(8, 3, size, size, generator=g)} for _ in range(4)]
    if method == "vbp":
        config = hf_sparsify.VBPConfig(target_macs_reduction=0.35)
        pruned = hf_sparsify.prune(dense, config, batches, disable_tqdm=True)
    else:
        config = hf_sparsify.SOSPHConfig(pruning_ratio=0.35, loss="kl", num_calibration_samples=32, calibration_batch_size=8)
        pruned = hf_sparsify.prune(dense, config, batches, device=device, disable_tqdm=True).to("cpu")
    macs_ratio = MacsCost().total(dense) / MacsCost().total(pruned)
    out = {"macs_ratio": round(macs_ratio, 3), "target": "≥ 1.4× (VBP paper: 1.44× on H100)" if method == "vbp" else "not set (SOSP's paper gives no latency)"}
    for runtime in args.runtimes.split(","):
        try:
            check_runtime(runtime, device, dtype)
        except hf_sparsify.HfSparsifyError as err:
            out[runtime] = f"not measured: {err}"
            continue
        start = time.perf_counter()
        prepared = {name: prepare_model(m, runtime, device=device, dtype=dtype, batch_size=args.batch) for name, m in (("dense", dense), (method, pruned))}
        try:
            timings = time_interleaved({k: p.run for k, p in prepared.items()}, rule, devices={device})
        finally:
            for p in prepared.values():
                p.close()
        out[runtime] = {**ratio_row(timings, [method], rule), "prepare_and_time_seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps({method: {runtime: out[runtime]}}), flush=True)
    return out


def part_24(args, device, dtype, rule) -> dict:
    try:
        check_runtime("semi-structured", device, dtype)
    except hf_sparsify.HfSparsifyError as err:
        return {"whole_model": f"not measured: {err}", "linear_only": "not measured"}
    model = build("vit", args.size)
    masked = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(mask_structure="2:4"))
    size = SIZES[args.size]["image_size"]
    dense = prepare_model(masked, "eager", device=device, dtype=dtype, batch_size=args.batch)
    sparse = prepare_model(masked, "semi-structured", device=device, dtype=dtype, batch_size=args.batch)
    # numerical check: the converted model against the masked dense model, same weights
    dense_model = masked.to(device=device, dtype=dtype)
    sparse_model = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(mask_structure="2:4")).to(device=device, dtype=dtype)
    conversion = to_semi_structured(sparse_model)
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    check = compare_with_dense(sparse_model, dense_model, {"pixel_values": x})
    timings = time_interleaved({"dense": dense.run, "semi_structured": sparse.run}, rule, devices={device})
    whole = {**ratio_row(timings, ["semi_structured"], rule), "numerical_check": check, "converted_layers": len(conversion.converted), "kept_dense": conversion.kept_dense}
    print(json.dumps({"2:4 whole model": whole}), flush=True)

    # linear layers alone: each distinct shape at the model's rows, summed over the model's layers
    rows = args.batch * ((size // SIZES[args.size]["patch_size"]) ** 2 + 1)
    shapes: dict[tuple[int, int], int] = {}
    for module in masked.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.shape[0] % 32 == 0 and module.weight.shape[1] % 64 == 0 and module.out_features != 1000:
            shapes[tuple(module.weight.shape)] = shapes.get(tuple(module.weight.shape), 0) + 1
    per_shape = {}
    total_dense = total_sparse = 0.0
    for (out_features, in_features), count in shapes.items():
        weight = torch.randn(out_features, in_features, device=device, dtype=dtype)
        from hf_sparsify.speed.semi_structured import mask_2_4

        weight = weight * mask_2_4(weight)
        sparse_weight = torch.sparse.to_sparse_semi_structured(weight)
        inputs = torch.randn(rows, in_features, device=device, dtype=dtype)
        bias = torch.randn(out_features, device=device, dtype=dtype)
        with torch.inference_mode():
            t = time_interleaved(
                {"dense": lambda: torch.nn.functional.linear(inputs, weight, bias), "sparse": lambda: torch.nn.functional.linear(inputs, sparse_weight, bias)}, rule, devices={device}
            )
        per_shape[f"{out_features}x{in_features}"] = {"count": count, "dense_ms": round(t["dense"].median * 1e3, 4), "sparse_ms": round(t["sparse"].median * 1e3, 4), "speedup": round(t["dense"].median / t["sparse"].median, 3)}
        total_dense += count * t["dense"].median
        total_sparse += count * t["sparse"].median
    linear = {"rows": rows, "per_shape": per_shape, "sum_dense_ms": round(total_dense * 1e3, 3), "sum_sparse_ms": round(total_sparse * 1e3, 3), "speedup": round(total_dense / total_sparse, 3)}
    print(json.dumps({"2:4 linear only": linear}), flush=True)
    dense.close()
    sparse.close()
    return {"whole_model": whole, "linear_only": linear}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="vbp,24,sosp", help="any of vbp, 24, sosp (SOSP-H at −35%% of the MACs, issue 13)")
    parser.add_argument("--runtimes", default="eager,compile,onnxruntime")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"gpu": "not measured: no CUDA device on this machine", "torch": torch.__version__}))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rule = TimingRule(warmup=10, warmup_seconds=2.0, min_repeats=20, max_repeats=300, precision=0.01, max_seconds=args.max_seconds)
    out = {
        "device": describe_device(device),
        "versions": library_versions(onnxruntime=True),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch,
        "dtype": args.dtype,
        "size": args.size,
    }
    if "vbp" in args.parts:
        out["vbp_35"] = part_vbp(args, device, dtype, rule)
    if "24" in args.parts:
        out["semi_structured_24"] = part_24(args, device, dtype, rule)
    if "sosp" in args.parts:
        out["sosp_h_35"] = part_vbp(args, device, dtype, rule, method="sosp-h")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
