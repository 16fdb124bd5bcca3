"""CAP at scale and at 2:4 (issue 17): CAP, FastCAP, WoodFisher and llm-compressor's SparseGPT in one process, on
the same calibration batches.

    # time: ViTs built from configs (random weights), random images and labels
    python benchmarks/bench_cap_scale.py time --size deit-tiny --images 512 --grad-batch-size 1 --block 192 \
        [--methods cap,fastcap,woodfisher,sparsegpt] [--sparsity 0.5] [--threads 1] [--device cpu|cuda] [--rounds 1]
    # quality: the bundled trained ViT on CIFAR-10 (../shared/data/cifar10), unstructured or 2:4
    python benchmarks/bench_cap_scale.py quality --settings 512x1:192,128x32:48 --structure 2:4 \
        [--methods magnitude,woodfisher,fastcap,cap,sparsegpt] [--limit N]
    # damp: choose CAP's N:M nm_damp on held-out TRAIN images (never the test split), one Fisher per setting
    python benchmarks/bench_cap_scale.py damp --settings 512x1:192,128x32:48 --structure 2:4 \
        [--grid 1e-3,3e-3,1e-2,3e-2,1e-1,3e-1] [--heldout 5000] [--heldout-seed 1]

What is printed (one JSON object per run, then a markdown table):

* the machine's measured batched-matmul rate (``torch.bmm`` of ``(n, B, B)`` blocks and one large product, in
  float64 and float32, best of 3), measured in the same process before the methods;
* per method: total seconds, seconds per phase (``pruning_result.timings``; SparseGPT: the whole ``oneshot``),
  each phase's flops and achieved rate (GFLOP/s) with its ratio to the measured bmm rate of its dtype, the peak
  memory (host: ``VmHWM`` of ``/proc/self/status``, reset before every method with ``/proc/self/clear_refs``;
  CUDA: ``torch.cuda.max_memory_allocated``), the Fisher store's size, and the ratio of every method's time to
  SparseGPT's.

Flop counts (per layer of ``d`` weights, Fisher block ``B``, ``m`` gradients; the usual counts for the algorithms,
not for what a kernel happens to do): Fisher ``2·m·d·B``; inverse ``d·B²`` (``B³`` per SPD inverse); elimination
``2·d·B²`` (``B`` downdates of ``B²`` multiply-adds per block); gradients ``3×`` the forward's multiply-adds ×2;
SparseGPT: its calibration forward passes ``2×`` (llm-compressor's sequential pipeline calibrates, then
propagates every layer), Hessians ``2·tokens·cin²`` per image and layer, and ``2·rows·cin² + cin³`` per layer.

SparseGPT is llm-compressor 0.14's ``SparseGPTModifier`` run by ``oneshot`` (sequential pipeline over the
model's transformer layers, ``dampening_frac=0.01``, ``block_size=128``, the prunable layers of hf_sparsify's
adapter as targets). It is a peer library installed for this benchmark only, never a dependency of hf_sparsify:
``pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru`` (its declared
``transformers<=5.17`` pin is not met by the installed 5.24; it runs on 5.24 ViTs as shown here). Without it,
``--methods`` must leave ``sparsegpt`` out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_SPARSIFY_DISABLE_TQDM", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify import CAPConfig, FastCAPConfig, MagnitudeConfig, WoodFisherConfig  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import CalibrationData  # noqa: E402
from hf_sparsify.observers.fisher import BlockLayout  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

SIZES = {
    # hidden, layers, heads, mlp, image, patch
    "tiny": (48, 2, 3, 192, 32, 4),
    "deit-tiny": (192, 12, 3, 768, 224, 16),
    "deit-small": (384, 12, 6, 1536, 224, 16),
    "vit-base": (768, 12, 12, 3072, 224, 16),
}


# ------------------------------------------------------------------------------------------------ measurement
def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def host_rss_bytes(field: str = "VmHWM") -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: torch.device) -> dict[str, float]:
    out = {"host_peak_GiB": round((host_rss_bytes() or 0) / 2**30, 3)}
    if device.type == "cuda":
        out["cuda_peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bmm_rate(device: torch.device, block: int) -> dict[str, float]:
    """GFLOP/s of torch.bmm on (n, B, B) blocks (the shape of the Fisher phases) and of one large product."""
    rates = {}
    for dtype in (torch.float64, torch.float32):
        for label, (n, b) in (("blocks", (max(8, (64 << 20) // (block * block * 8)), block)), ("large", (1, 2048))):
            a = torch.randn(n, b, b, dtype=dtype, device=device)
            c = torch.randn(n, b, b, dtype=dtype, device=device)
            torch.bmm(a, c)
            best = float("inf")
            for _ in range(3):
                sync(device)
                start = time.perf_counter()
                torch.bmm(a, c)
                sync(device)
                best = min(best, time.perf_counter() - start)
            rates[f"{str(dtype)[6:]}_{label}"] = round(2 * n * b**3 / best / 1e9, 2)
            del a, c
    return rates


def forward_macs(model, image_size: int) -> float:
    """Multiply-adds of one image's forward pass (linear layers, attention products, patch embedding)."""
    cfg = model.config
    tokens = (image_size // cfg.patch_size) ** 2 + 1
    h, mlp, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = tokens * (4 * h * h + 2 * h * mlp) + 2 * tokens * tokens * h
    return layers * per_layer + (tokens - 1) * 3 * cfg.patch_size**2 * h


# ------------------------------------------------------------------------------------------------ methods
def sparsegpt(model, batches, *, sparsity: float, structure: str, device: torch.device):
    """llm-compressor's SparseGPTModifier on the adapter's prunable layers (a pruned copy)."""
    import copy

    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from torch.utils.data import DataLoader

    pruned = copy.deepcopy(model)
    names = [layer.name for layer in get_adapter(pruned).prunable_layers()]
    targets = ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"]
    layer_class = type(get_adapter(pruned).prunable_layers()[0].module)  # unused when sequential targets are found
    del layer_class
    blocks = sorted({type(m).__name__ for n, m in pruned.named_modules() if re.fullmatch(r".*layers\.\d+", n)})
    with tempfile.TemporaryDirectory() as folder:
        # oneshot re-reads the config from model.config.name_or_path (to check for quantization)
        pruned.config.save_pretrained(folder)
        pruned.config._name_or_path = folder
        modifier = SparseGPTModifier(
            sparsity=sparsity if structure == "unstructured" else 0.5,
            mask_structure="0:0" if structure == "unstructured" else structure,
            targets=targets,
            block_size=128,
            dampening_frac=0.01,
        )
        loader = DataLoader([{"pixel_values": b["pixel_values"].to(device)} for b in batches], batch_size=None)
        with contextlib.redirect_stderr(io.StringIO()):
            oneshot(
                model=pruned,
                processor=transformers.ViTImageProcessor(),
                recipe=modifier,
                dataset=loader,
                num_calibration_samples=len(batches),
                pipeline="sequential",
                sequential_targets=blocks,
            )
    return pruned


def sparsegpt_flops(model, num_images: int, image_size: int) -> float:
    cfg = model.config
    tokens = (image_size // cfg.patch_size) ** 2 + 1
    total = 2 * 2 * forward_macs(model, image_size) * num_images
    for layer in get_adapter(model).prunable_layers():
        rows, cin = layer.weight.shape[0], layer.weight[0].numel()
        total += 2 * tokens * cin * cin * num_images + 2 * rows * cin * cin + cin**3
    return total


def fisher_phase_flops(pruned, config, num_grads: int) -> dict[str, float]:
    """Flops of the CAP-family phases from the layers' block sizes."""
    flops = {"fisher": 0.0, "inverse": 0.0, "elimination": 0.0}
    for name, entry in pruned.pruning_result.layers.items():
        d, b = entry["numel"], entry["fisher_block_size"]
        if config.method == "fastcap":
            flops["fisher"] += 2 * num_grads * d * b
            continue
        flops["fisher"] += 2 * num_grads * d * b
        flops["inverse"] += d * b * b
        if config.method == "cap":
            flops["elimination"] += 2 * d * b * b
    return {k: v for k, v in flops.items() if v}


def fisher_store_bytes(model, config) -> int:
    if config.method in ("fastcap", "sparsegpt", "magnitude"):
        return 0
    itemsize = 8 if getattr(config, "fisher_dtype", "float64") == "float64" else 4
    total = 0
    for layer in get_adapter(model).prunable_layers():
        total += layer.weight.numel() * BlockLayout.for_weight(layer.weight, config.fisher_block_size).block_size * itemsize
    return total


def run_method(name, model, batches, config, *, device, structure, sparsity, image_size, rates, num_images):
    peak_reset(device)
    sync(device)
    start = time.perf_counter()
    if name == "sparsegpt":
        pruned = sparsegpt(model, batches, sparsity=sparsity, structure=structure, device=device)
        timings = {}
    else:
        pruned = hf_sparsify.prune(model, config, batches if name != "magnitude" else None, device=device, disable_tqdm=True)
        timings = dict(pruned.pruning_result.timings)
    sync(device)
    total = time.perf_counter() - start
    row = {"method": name, "total_s": round(total, 2), **peak_memory(device)}
    row["phases_s"] = {k: round(v, 3) for k, v in timings.items()}
    flops = {}
    if name == "sparsegpt":
        flops["total"] = sparsegpt_flops(model, num_images, image_size)
    elif name != "magnitude":
        flops = fisher_phase_flops(pruned, config, pruned.pruning_result.info["num_grads"])
        if "gradients" in timings:
            flops["gradients"] = 3 * 2 * forward_macs(model, image_size) * num_images
    achieved = {}
    for phase, count in flops.items():
        seconds = total if phase == "total" else timings.get(phase)
        if seconds:
            dtype = "float32" if phase in ("gradients", "total") else "float64"
            gflops = count / seconds / 1e9
            achieved[phase] = {"GFLOP": round(count / 1e9, 1), "GFLOP/s": round(gflops, 2), "bmm_rate_over_achieved": round(rates[f"{dtype}_blocks"] / gflops, 2)}
    row["flop_rates"] = achieved
    if config is not None:
        store = fisher_store_bytes(model, config)
        if store:
            row["fisher_store_GiB"] = round(store / 2**30, 3)
            row["host_peak_over_store"] = round(row["host_peak_GiB"] * 2**30 / store, 3)
    return pruned, row


def method_configs(methods, *, sparsity, structure, block, num_grads, grad_batch_size):
    common = dict(fisher_block_size=block, num_grads=num_grads, grad_batch_size=grad_batch_size, seed=0)
    if structure == "unstructured":
        common["sparsity"] = sparsity
    else:
        common.update(sparsity=0.5, mask_structure=structure)
    out = {}
    for name in methods:
        if name == "cap":
            out[name] = CAPConfig(**common)
        elif name == "woodfisher":
            out[name] = WoodFisherConfig(**common)
        elif name == "fastcap":
            out[name] = FastCAPConfig(**common)
        elif name == "magnitude":
            out[name] = MagnitudeConfig(sparsity=common["sparsity"], mask_structure=structure, sparsity_distribution="global" if structure == "unstructured" else "uniform")
        elif name == "sparsegpt":
            out[name] = None
        else:
            raise SystemExit(f"unknown method {name}")
    return out


# ------------------------------------------------------------------------------------------------ modes
def time_mode(args) -> None:
    device = torch.device(args.device)
    hidden, layers, heads, mlp, image, patch = SIZES[args.size]
    config = transformers.ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp, image_size=image, patch_size=patch, num_labels=1000)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval().to(device)
    g = args.grad_batch_size
    num_grads = args.images // g
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_grads * g, 3, image, image, generator=generator)
    labels = torch.randint(0, 1000, (num_grads * g,), generator=generator)
    batches = [{"pixel_values": images[i * g : (i + 1) * g].to(device), "labels": labels[i * g : (i + 1) * g].to(device)} for i in range(num_grads)]
    methods = args.methods.split(",")
    configs = method_configs(methods, sparsity=args.sparsity, structure=args.structure, block=args.block, num_grads=num_grads, grad_batch_size=None)
    if args.fisher_dtype:
        configs = {k: (v.replace(fisher_dtype=args.fisher_dtype) if k in ("cap", "woodfisher") else v) for k, v in configs.items()}
    rates = bmm_rate(device, args.block)
    header = {
        "mode": "time",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python " + " ".join(sys.argv),
        "model": f"{args.size}: hidden {hidden}, {layers} layers, MLP {mlp}, {image} px / {patch}; {sum(l.weight.numel() for l in get_adapter(model).prunable_layers()):,} targeted weights (random)",
        "calibration": f"{num_grads * g} random images; CAP family: {num_grads} gradients of {g}",
        "bmm_GFLOP_per_s": rates,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(header), flush=True)
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for round_index in range(args.rounds):
        for name in methods if round_index % 2 == 0 else methods[::-1]:  # interleaved rounds
            pruned, row = run_method(name, model, batches, configs[name], device=device, structure=args.structure, sparsity=args.sparsity, image_size=image, rates=rates, num_images=num_grads * g)
            row["load_average"] = round(os.getloadavg()[0], 2)
            del pruned
            rows[name].append(row)
            print(json.dumps(row), flush=True)
    summary = {name: min(r["total_s"] for r in rs) if args.rounds == 1 else statistics.median(r["total_s"] for r in rs) for name, rs in rows.items()}
    if "sparsegpt" in summary:
        print(json.dumps({"time_over_sparsegpt": {k: round(v / summary["sparsegpt"], 2) for k, v in summary.items()}, "load_average_after": [round(x, 2) for x in os.getloadavg()]}))
    print("\n| method | total s | " + " | ".join(("gradients", "fisher", "inverse", "elimination", "selection", "update")) + " | host peak GiB | Fisher store GiB | / SparseGPT |")
    print("|---|" + "---|" * 10)
    for name, rs in rows.items():
        r = rs[-1]
        phases = " | ".join(str(r["phases_s"].get(p, "")) for p in ("gradients", "fisher", "inverse", "elimination", "selection", "update"))
        ratio = round(summary[name] / summary["sparsegpt"], 2) if "sparsegpt" in summary else ""
        print(f"| {name} | {summary[name]} | {phases} | {r['host_peak_GiB']} | {r.get('fisher_store_GiB', '')} | {ratio} |")


def quality_mode(args) -> None:
    from hf_sparsify.evaluation import evaluate_model

    device = torch.device(args.device)
    model_dir = SHARED / "models" / "vit-tiny-cifar10"
    if not model_dir.exists():
        from hf_sparsify.assets import DEMO_MODEL_DIR

        model_dir = DEMO_MODEL_DIR
    data_dir = SHARED / "data" / "cifar10"
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval().to(device)
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    train = hf_sparsify.load_image_dataset(data_dir, "train")
    test = hf_sparsify.load_image_dataset(data_dir, "test")

    def evaluate(m):
        return evaluate_model(m, test, image_processor=processor, limit=args.limit, seed=0, disable_tqdm=True)

    image = model.config.image_size
    header = {
        "mode": "quality",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, transformers {transformers.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python " + " ".join(sys.argv),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "dense": evaluate(model),
    }
    print(json.dumps(header), flush=True)
    table = []
    for setting in args.settings.split(","):
        shape, block = setting.split(":")
        num_grads, g = (int(x) for x in shape.split("x"))
        # the same calibration batches for every method: drawn once, at random (seed 0) from the train split
        batches = list(CalibrationData.from_source(train, model=model, image_processor=processor, batch_size=g, seed=0, num_samples=num_grads * g).iter_batches(num_grads))
        methods = args.methods.split(",")
        configs = method_configs(methods, sparsity=args.sparsity, structure=args.structure, block=int(block), num_grads=num_grads, grad_batch_size=None)
        for name in methods:
            if name in args.override:
                configs[name] = configs[name].replace(**args.override[name])
            pruned, row = run_method(name, model, batches, configs[name], device=device, structure=args.structure, sparsity=args.sparsity, image_size=image, rates={"float64_blocks": 1, "float32_blocks": 1}, num_images=num_grads * g)
            row.pop("flop_rates", None)
            row.update(setting=setting, structure=args.structure, **evaluate(pruned))
            print(json.dumps(row), flush=True)
            table.append(row)
            del pruned
    settings = list(dict.fromkeys(r["setting"] for r in table))
    print(f"\n| method ({args.structure}) | " + " | ".join(f"{s.split(':')[0]} images/grad... B={s.split(':')[1]}" for s in settings) + " |")
    print("|---|" + "---|" * len(settings))
    print("| dense | " + " | ".join(f"{header['dense']['accuracy'] * 100:.2f}%" for _ in settings) + " |")
    for name in dict.fromkeys(r["method"] for r in table):
        cells = [next((f"{r['accuracy'] * 100:.2f}%" for r in table if r["method"] == name and r["setting"] == s), "") for s in settings]
        print(f"| {name} | " + " | ".join(cells) + " |")


def heldout_indices(length: int, settings: list[tuple[int, int]], size: int, seed: int) -> list[int]:
    """``size`` train rows drawn at random with ``seed`` among those that no calibration draw of ``settings`` reads
    (quality mode draws ``num_grads × batch`` rows with seed 0: ``random_indices(length, n, 0)``)."""
    from hf_sparsify.data import random_indices

    used: set[int] = set()
    for num_grads, g in settings:
        used.update(random_indices(length, num_grads * g, 0))
    free = [i for i in range(length) if i not in used]
    return sorted(free[j] for j in random_indices(len(free), size, seed))


@contextlib.contextmanager
def cached_fisher():
    """Within the block, CAP's pruner computes its Fisher sums once: the first ``collect_fisher`` call's sums are
    kept, and every later call (same model, targets and batches: the caller's promise) gets a copy of them. What the
    dampening changes (the inverse, the greedy elimination, the weights) runs in full every time, through
    ``hf_sparsify.prune`` itself."""
    import dataclasses

    from hf_sparsify.methods.cap import pruner as cap_pruner

    original = cap_pruner.collect_fisher
    cache: dict[tuple, object] = {}

    def collect(model, targets, batches, **kwargs):
        key = (tuple(t.name for t in targets), kwargs.get("mode"), kwargs.get("seed"))
        if key not in cache:
            cache[key] = original(model, targets, batches, **kwargs)
            cache[key] = dataclasses.replace(cache[key], sums={k: v.clone() for k, v in cache[key].sums.items()})
        stats = cache[key]
        return dataclasses.replace(stats, sums={k: v.clone() for k, v in stats.sums.items()}, timings=dict(stats.timings))

    cap_pruner.collect_fisher = collect
    try:
        yield
    finally:
        cap_pruner.collect_fisher = original


def damp_mode(args) -> None:
    """CAP's N:M top-1 on held-out train images for a grid of ``nm_damp``, one Fisher per setting."""
    from hf_sparsify.data import random_indices
    from hf_sparsify.evaluation import evaluate_model

    device = torch.device(args.device)
    model_dir = SHARED / "models" / "vit-tiny-cifar10"
    data_dir = SHARED / "data" / "cifar10"
    if not (model_dir.exists() and data_dir.exists()):
        raise SystemExit(f"damp mode needs {model_dir} and {data_dir}")
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir).eval().to(device)
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    train = hf_sparsify.load_image_dataset(data_dir, "train")
    settings = []
    for setting in args.settings.split(","):
        shape, block = setting.split(":")
        num_grads, g = (int(x) for x in shape.split("x"))
        settings.append((num_grads, g, int(block)))
    heldout_rows = heldout_indices(len(train), [(m, g) for m, g, _ in settings], args.heldout, args.heldout_seed)
    heldout = train.select(heldout_rows)
    labels = heldout["label"]
    grid = [float(x) for x in args.grid.split(",")]

    def evaluate(m):
        return evaluate_model(m, heldout, image_processor=processor, disable_tqdm=True)

    header = {
        "mode": "damp",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, transformers {transformers.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python " + " ".join(sys.argv),
        "heldout": f"{len(heldout_rows)} train rows (seed {args.heldout_seed}) outside every calibration draw; per-class counts {sorted(collections.Counter(labels).items())}",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "dense": evaluate(model),
    }
    print(json.dumps(header), flush=True)
    table: dict[float, dict[str, float]] = {}
    for num_grads, g, block in settings:
        name = f"{num_grads}x{g}:{block}"
        batches = list(CalibrationData.from_source(train, model=model, image_processor=processor, batch_size=g, seed=0, num_samples=num_grads * g).iter_batches(num_grads))
        assert not set(heldout_rows) & set(random_indices(len(train), num_grads * g, 0))  # the draw of the batches
        base = CAPConfig(fisher_block_size=block, num_grads=num_grads, sparsity=0.5, mask_structure=args.structure, seed=0)
        with cached_fisher():
            for value in grid:
                start = time.perf_counter()
                pruned = hf_sparsify.prune(model, base.replace(nm_damp=value), batches, device=device, disable_tqdm=True)
                seconds = time.perf_counter() - start
                row = {"setting": name, "nm_damp": value, "seconds": round(seconds, 1), **evaluate(pruned), "load_average": round(os.getloadavg()[0], 2)}
                print(json.dumps(row), flush=True)
                table.setdefault(value, {})[name] = row["accuracy"]
                del pruned
    names = [f"{m}x{g}:{b}" for m, g, b in settings]
    mean = {v: statistics.mean(cells[n] for n in names) for v, cells in table.items()}
    best = max(mean, key=lambda v: (mean[v], -v))
    print("\n| nm_damp | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for value in grid:
        cells = " | ".join(f"{table[value][n] * 100:.2f}%" for n in names)
        print(f"| {value:g}{' (best)' if value == best else ''} | {cells} | {mean[value] * 100:.2f}% |")
    print(json.dumps({"rule": "highest mean held-out top-1 over the settings", "best_nm_damp": best, "load_average_after": [round(x, 2) for x in os.getloadavg()]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("time", "quality", "damp"))
    parser.add_argument("--size", default="deit-tiny", choices=tuple(SIZES))
    parser.add_argument("--images", type=int, default=512, help="time mode: calibration images")
    parser.add_argument("--grad-batch-size", type=int, default=1, help="time mode: images per gradient")
    parser.add_argument("--block", type=int, default=192)
    parser.add_argument("--settings", default="512x1:192,128x32:48", help="quality mode: GRADSxBATCH:B,...")
    parser.add_argument("--methods", default="cap,fastcap,woodfisher,sparsegpt")
    parser.add_argument("--structure", default=None, help="'unstructured' or 'N:M' (default: unstructured; damp mode: 2:4)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--fisher-dtype", default=None, help="CAP/WoodFisher fisher_dtype (default: theirs)")
    parser.add_argument("--override", default="{}", help='quality mode: JSON {"cap": {"damp": 1e-6}} of config fields')
    parser.add_argument("--limit", type=int, default=None, help="quality mode: evaluate on N random test images (default: all 10,000)")
    parser.add_argument("--grid", default="1e-3,3e-3,1e-2,3e-2,1e-1,3e-1", help="damp mode: nm_damp values")
    parser.add_argument("--heldout", type=int, default=5000, help="damp mode: held-out train images")
    parser.add_argument("--heldout-seed", type=int, default=1, help="damp mode: seed of the held-out draw")
    parser.add_argument("--buffer-fraction", type=float, default=None, help="time mode: the Fisher observer's gradient buffer as a fraction of the store (hf_sparsify.observers.fisher.STORE_FRACTION_FOR_BUFFER; default: the library's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    args.override = json.loads(args.override)
    if args.structure is None:
        args.structure = "2:4" if args.mode == "damp" else "unstructured"
    if args.mode == "damp" and args.structure == "unstructured":
        raise SystemExit("damp mode: nm_damp applies to N:M masks only; pass --structure N:M (e.g. 2:4)")
    torch.set_num_threads(args.threads)
    if getattr(args, "buffer_fraction", None) is not None:
        import hf_sparsify.observers.fisher as fisher_module

        fisher_module.STORE_FRACTION_FOR_BUFFER = args.buffer_fraction
    transformers.logging.set_verbosity_error()
    {"time": time_mode, "quality": quality_mode, "damp": damp_mode}[args.mode](args)


if __name__ == "__main__":
    main()
