"""SOSP quality on the trained tiny ViT (CIFAR-10): top-1 directly after pruning (no finetuning), against VBP and
the maintained peer Torch-Pruning 1.6 at the same MACs.

For each MACs reduction (20/35/50% by default) and calibration seed it prunes the bundled ViT with
  * SOSP-H with its defaults (row ``sosp-h``) and the variants of ``SOSP_VARIANTS`` (both saliency forms with the
    exact Hessian and the Gauss–Newton product, no first-order term, ranking per MAC, 1 or 32 neurons per MLP at
    least, 3 rounds) — one curvature pass per seed and curvature kind, shared by the variants and targets of a
    single round (they differ only in how g and G·1 are combined and allocated);
  * SOSP-I (one Gauss–Newton matrix per seed, shared by the targets);
  * VBP (its defaults: MLP neurons, global "output" normalisation, mean-shift fold);
  * Torch-Pruning 1.6 (``torch_pruning``; install it for this benchmark only:
    ``pip install --no-deps torch-pruning==1.6.0``, the version measured): ``MetaPruner`` with ``global_pruning=True``, its
    ``GroupTaylorImportance`` and ``GroupHessianImportance`` (defaults: mean group reduction, mean normaliser), MLP
    neurons (fc1 rows / fc2 columns) and whole heads (``prune_num_heads=True``, ``prune_head_dims=False``), the
    residual width untouched; the neuron and head ratios are set equal and bisected until the measured MACs
    reduction matches the target. Widths are multiples of 8 (``round_to=8``) as for SOSP and VBP, at least 8
    neurons per MLP (``max_pruning_ratio``). The Hessian importance is run as shipped and with its per-sample
    accumulation fixed (1.6's ``accumulate_grad`` keys by parameter but checks by name, so each sample overwrites
    the sum: the shipped scores are the last sample's squared gradient).
All methods see the same ``--num-calibration`` random train images per seed, drawn outside a fixed held-out slice of
the train split. Settings are chosen with ``--eval-on heldout`` (metrics on that slice), reported with ``--eval-on test``
(the default; the test split is never used to choose). Metrics: top-1, cross-entropy, top-1 agreement with the dense
model, KL(dense ‖ pruned). Prints a JSON line per row and Markdown
tables (per row and means ± sd over seeds).

    python benchmarks/bench_sosp_cifar10.py [--eval-on heldout|test] [--variants "sosp-h,sosp-i,vbp,tp taylor"] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import CalibrationData, dataset_batches, find_columns, random_indices  # noqa: E402
from hf_sparsify.methods.sosp.pruner import SOSPPruner  # noqa: E402
from hf_sparsify.structured import MacsCost, attention_query_modules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SOSP_VARIANTS = {
    "sosp-h": ("sosp-h", {}),
    "sosp-h |−g+½G·1|": ("sosp-h", {"saliency": "abs_of_sum"}),
    "sosp-h |g|+½|G·1|": ("sosp-h", {"saliency": "sum_of_abs"}),
    "sosp-h ½|G·1| (no g)": ("sosp-h", {"first_order": False}),
    "sosp-h Gauss–Newton |−g+½G·1|": ("sosp-h", {"hessian": "gauss_newton", "saliency": "abs_of_sum"}),
    "sosp-h Gauss–Newton |g|+½|G·1|": ("sosp-h", {"hessian": "gauss_newton", "saliency": "sum_of_abs"}),
    "sosp-h per MAC": ("sosp-h", {"rank_per_cost": True}),
    "sosp-h min 1 neuron": ("sosp-h", {"min_neurons_per_layer": 1}),
    "sosp-h min 32 neurons": ("sosp-h", {"min_neurons_per_layer": 32}),
    "sosp-h 3 rounds": ("sosp-h", {"iterative_steps": 3}),
    "sosp-i": ("sosp-i", {}),
}
PEER_VARIANTS = ["tp taylor", "tp hessian (shipped)", "tp hessian (accumulation fixed)", "tp taylor (neurons only)"]


class CachedCurvature(SOSPPruner):
    """SOSP with its curvature pass cached per (seed, kind of curvature): the saliency variants and the targets of one
    seed share it (a fresh pass would give the same numbers)."""

    cache: dict = {}
    key: tuple = ()

    def curvature(self, model, groups, calibration, **kwargs):
        if self.config.iterative_steps > 1:  # later rounds see a pruned model: never cached
            return super().curvature(model, groups, calibration, **kwargs)
        key = (*self.key, self.config.method, getattr(self.config, "hessian", None))
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = super().curvature(model, groups, calibration, **kwargs)
            self.cache[key]["seconds"] = time.perf_counter() - start
        return self.cache[key]


def preprocess(dataset, processor, indices, batch_size):
    image_column, label_column = find_columns(dataset)
    return list(dataset_batches(dataset, indices, batch_size, processor, image_column=image_column, label_column=label_column))


def macs_of(model) -> int:
    return int(MacsCost(attention_query_modules(get_adapter(model))).total(model))


def sosp_prune(model, method, settings, target, calibration, seed):
    config_class = hf_sparsify.SOSPHConfig if method == "sosp-h" else hf_sparsify.SOSPIConfig
    config = config_class(pruning_ratio=target, num_calibration_samples=sum(b["pixel_values"].shape[0] for b in calibration), seed=seed, **settings)
    pruned = copy.deepcopy(model)
    pruner = CachedCurvature(config)
    pruner.key = (seed,)
    data = CalibrationData.from_source(calibration, batch_size=config.effective_batch_size, num_samples=config.calibration_images(), needs_labels=True)
    result = pruner.prune(pruned, get_adapter(pruned), data, device=torch.device("cpu"), disable_tqdm=True)
    return pruned, result


# ---------------------------------------------------------------------------------------------- Torch-Pruning
def tp_gradients(model, calibration, kind: str) -> dict[str, torch.Tensor]:
    """What the importance reads from ``param.grad``: ``{"taylor": the mean batch gradient}``, or (``kind="hessian"``)
    the per-sample squared gradients accumulated as 1.6 ships it (each sample overwrites: the last one) and correctly
    averaged, ``{"hessian_shipped": ..., "hessian_fixed": ...}``, from one per-sample pass."""
    import torch_pruning as tp

    params = dict(model.named_parameters())
    model.zero_grad()
    if kind == "taylor":
        for batch in calibration:
            loss = model(**batch).loss / len(calibration)
            loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        model.zero_grad()
        return {"taylor": grads}
    shipped = tp.importance.GroupHessianImportance()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    for batch in calibration:
        logits = model(pixel_values=batch["pixel_values"]).logits
        losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        for loss in losses:
            model.zero_grad()
            loss.backward(retain_graph=True)
            shipped.accumulate_grad(model)
            for n, p in params.items():
                total[n] += p.grad.detach().square()
            count += 1
    model.zero_grad()
    return {
        # what GroupHessianImportance.__call__ writes into param.grad before scoring (the last sample's)
        "hessian_shipped": {n: shipped._accu_grad[p] / shipped._counter[p] for n, p in params.items() if p in shipped._accu_grad},
        "hessian_fixed": {n: t / count for n, t in total.items()},
    }


def tp_prune_once(model, grads, importance, ratio, heads: bool):
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    for name, param in pruned.named_parameters():
        param.grad = grads[name].clone() if name in grads else None
    num_heads, ignored = {}, [pruned.classifier, pruned.vit.embeddings.patch_embeddings.projection]
    for layer in pruned.vit.layers:
        attention = layer.attention
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
            num_heads[linear] = attention.num_attention_heads
        ignored += [attention.o_proj, layer.mlp.fc2]  # the residual width stays
    example = {"pixel_values": torch.zeros(1, 3, 32, 32)}
    pruner = tp.pruner.MetaPruner(
        pruned, example_inputs=example, importance=importance, global_pruning=True, pruning_ratio=ratio,
        max_pruning_ratio=1 - 8 / 192, ignored_layers=ignored, round_to=8, num_heads=num_heads,
        prune_num_heads=heads, prune_head_dims=False, head_pruning_ratio=ratio if heads else 0.0,
        output_transform=lambda out: out.logits,
    )  # fmt: skip
    pruner.step()
    for layer in pruned.vit.layers:
        attention = layer.attention
        attention.num_attention_heads = attention.q_proj.out_features // attention.head_dim
    for param in pruned.parameters():
        param.grad = None
    return pruned


def tp_prune(model, grads, importance_class, target, dense_macs, heads: bool):
    """Bisect the common neuron/head ratio until the MACs reduction is closest to ``target``."""
    low, high, best = 0.0, 0.95, None
    for _ in range(11):
        ratio = (low + high) / 2
        try:
            pruned = tp_prune_once(model, grads, importance_class(), ratio, heads)
            reduction = 1 - macs_of(pruned) / dense_macs
        except Exception as err:  # a ratio Torch-Pruning cannot apply (e.g. every head of a layer): go lower
            print(json.dumps({"torch_pruning_error": str(err)[:200], "ratio": ratio}))
            high = ratio
            continue
        if best is None or abs(reduction - target) < abs(best[1] - target):
            best = (pruned, reduction, ratio)
        if reduction < target:
            low = ratio
        else:
            high = ratio
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "hf_sparsify" / "assets" / "vit-tiny-cifar10"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--targets", default="0.2,0.35,0.5", help="MACs reductions")
    parser.add_argument("--num-calibration", type=int, default=1024)
    parser.add_argument("--seeds", default="0,1,2", help="calibration seeds, comma-separated")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the rows (default: all): the names of SOSP_VARIANTS, vbp, and PEER_VARIANTS")
    parser.add_argument("--eval-limit", type=int, default=None, help="random subset of the evaluation images (default: all)")
    parser.add_argument(
        "--eval-on", default="test", choices=["test", "heldout"],
        help="'test': the test split (report); 'heldout': --heldout-size train images never drawn for calibration (choose settings on these)",
    )  # fmt: skip
    parser.add_argument("--heldout-size", type=int, default=5000, help="train images set aside (never calibration) for --eval-on heldout")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    started = time.time()
    load_start = os.getloadavg()

    model = transformers.AutoModelForImageClassification.from_pretrained(args.model).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(args.model)
    train = hf_sparsify.load_image_dataset(args.data, split="train")
    # a fixed slice of the train split is never drawn for calibration, in both modes: settings are chosen on it
    order = random_indices(len(train), None, 10_000)
    heldout, pool = order[: args.heldout_size], order[args.heldout_size :]
    if args.eval_on == "test":
        source = hf_sparsify.load_image_dataset(args.data, split="test")
        eval_indices = list(range(len(source)))
    else:
        source, eval_indices = train, heldout
    if args.eval_limit:
        eval_indices = [eval_indices[i] for i in random_indices(len(eval_indices), args.eval_limit, 1234)]
    evaluation = preprocess(source, processor, eval_indices, 500)
    labels = torch.cat([b["labels"] for b in evaluation])
    wanted = set(args.variants.split(",")) if args.variants else None

    @torch.no_grad()
    def all_logits(m):
        return torch.cat([m(pixel_values=b["pixel_values"]).logits.double() for b in evaluation])

    dense_logits = all_logits(model)
    dense_macs = macs_of(model)

    def metrics(m):
        logits = all_logits(m)
        log_p = logits.log_softmax(-1)
        return {
            "accuracy": float((logits.argmax(-1) == labels).double().mean()),
            "loss": float(torch.nn.functional.nll_loss(log_p, labels)),
            "agreement": float((logits.argmax(-1) == dense_logits.argmax(-1)).double().mean()),
            "kl": float(torch.nn.functional.kl_div(log_p, dense_logits.log_softmax(-1), log_target=True, reduction="batchmean")),
        }

    def widths(m):
        return [f"{layer.attention.q_proj.out_features // layer.attention.head_dim}h/{layer.mlp.fc1.out_features}" for layer in m.vit.layers]

    rows = [{"variant": "dense", "target": 0.0, "seed": None, **metrics(model), "macs": dense_macs, "widths": widths(model)}]
    print(json.dumps(rows[-1]), flush=True)

    def record(variant, target, seed, pruned, **extra):
        rows.append({"variant": variant, "target": target, "seed": seed, **metrics(pruned), "macs": macs_of(pruned), "widths": widths(pruned), **extra})
        print(json.dumps(rows[-1]), flush=True)

    targets = [float(t) for t in args.targets.split(",")]
    for seed in [int(s) for s in args.seeds.split(",")]:
        calibration = preprocess(train, processor, [pool[i] for i in random_indices(len(pool), args.num_calibration, seed)], 32)
        CachedCurvature.cache = {}
        for target in targets:
            for name, (method, settings) in SOSP_VARIANTS.items():
                if wanted is None or name in wanted:
                    pruned, result = sosp_prune(model, method, settings, target, calibration, seed)
                    key = (seed, method, settings.get("hessian", "exact") if method == "sosp-h" else None)
                    record(name, target, seed, pruned, curvature_seconds=CachedCurvature.cache.get(key, {}).get("seconds"), saliency_seconds=result.timings.get("saliency"))
            if wanted is None or "vbp" in wanted:
                config = hf_sparsify.VBPConfig(target_macs_reduction=target, num_calibration_samples=args.num_calibration, seed=seed)
                record("vbp", target, seed, hf_sparsify.prune(model, config, calibration, disable_tqdm=True))
        if wanted is None or any(v.startswith("tp ") for v in wanted):
            import torch_pruning as tp

            grads = {}
            for variant in PEER_VARIANTS:
                if wanted is not None and variant not in wanted:
                    continue
                kind = "taylor" if "taylor" in variant else ("hessian_shipped" if "shipped" in variant else "hessian_fixed")
                if kind not in grads:
                    grads.update(tp_gradients(model, calibration, "taylor" if kind == "taylor" else "hessian"))
                importance = tp.importance.GroupTaylorImportance if kind == "taylor" else tp.importance.GroupHessianImportance
                for target in targets:
                    pruned, _reduction, ratio = tp_prune(model, grads[kind], importance, target, dense_macs, heads="neurons only" not in variant)
                    record(variant, target, seed, pruned, tp_ratio=round(ratio, 5))

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}")
    where = "test images" if args.eval_on == "test" else f"held-out train images (a fixed {args.heldout_size:,}-image slice never used for calibration)"
    print(f"evaluation: {len(eval_indices):,} CIFAR-10 {where}; calibration: {args.num_calibration} random train images outside the held-out slice, seeds {args.seeds}")
    print(f"wall time {time.time() - started:.0f} s; load average at start {load_start}, at end {os.getloadavg()}")
    print()
    print("| MACs removed (target) | variant | seed | widths (heads/MLP per block) | top-1 | loss | agreement | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {1 - r['macs'] / dense_macs:.1%} ({r['target']:.0%}) | {r['variant']} | {r['seed']} | {' '.join(r['widths'])} | "
              f"{r['accuracy']:.2%} | {r['loss']:.3f} | {r['agreement']:.2%} | {r['kl']:.4f} |")  # fmt: skip
    print()
    print("| MACs target | variant | MACs removed | top-1 (mean ± sd) | loss | agreement | KL |")
    print("|---|---|---|---|---|---|---|")
    groups: dict = {}
    for r in rows[1:]:
        groups.setdefault((r["target"], r["variant"]), []).append(r)
    for (target, variant), members in groups.items():
        accuracy = [m["accuracy"] * 100 for m in members]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        mean = lambda key: statistics.mean(m[key] for m in members)  # noqa: E731
        removed = statistics.mean(1 - m["macs"] / dense_macs for m in members)
        print(f"| {target:.0%} | {variant} | {removed:.1%} | {statistics.mean(accuracy):.2f}% ± {spread:.2f} | {mean('loss'):.3f} | {mean('agreement'):.2%} | {mean('kl'):.4f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
