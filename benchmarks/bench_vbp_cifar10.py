"""VBP quality on the trained tiny ViT (CIFAR-10): top-1 directly after pruning (no finetuning).

For each MACs reduction (20/35/50% by default), with and without the mean-shift compensation, it compares
  * VBP with a global threshold under each per-layer normalisation of the variances (mean, max, none),
  * VBP with per_layer allocation,
  * the default VBP with the paper's fold (the all-token mean in every block, ``compensation_tokens="all"``),
  * the widths of VBP with the default normalisation, the neurons chosen by the L1 norm of their fc1 row
    (weight magnitude) instead of their variance.
Metrics: top-1, cross-entropy, top-1 agreement with the dense model, KL(dense || pruned).

Calibration: ``--num-calibration`` train images drawn at random with each of ``--seeds``; evaluation: the full test set
(10,000 images) unless ``--eval-limit`` draws a random subset. Prints a JSON line per row and a Markdown table.

    python benchmarks/bench_vbp_cifar10.py [--model ../shared/models/vit-tiny-cifar10] [--data ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify.adapters import get_adapter  # noqa: E402
from hf_sparsify.data import dataset_batches, find_columns, random_indices  # noqa: E402
from hf_sparsify.observers import collect_activation_moments  # noqa: E402
from hf_sparsify.structured import MacsCost, kept_units, select_groups, shrink_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def preprocess(dataset, processor, indices, batch_size=500):
    image_column, label_column = find_columns(dataset)
    return list(dataset_batches(dataset, indices, batch_size, processor, image_column=image_column, label_column=label_column))


def l1_same_widths(model, widths: dict[str, int], moments, compensation: bool):
    """A copy of ``model`` with the given MLP widths, keeping the neurons of largest fc1-row L1 norm."""
    import copy

    pruned = copy.deepcopy(model)
    for group in select_groups(get_adapter(pruned), ["mlp"]):
        rows = torch.stack([pruned.get_submodule(p).weight.detach().abs().sum(1) for p in group.producers]).sum(0)
        keep = kept_units(rows, widths[group.name])
        shrink_group(pruned, group, keep, moments[group.name].mean if compensation else None)
    return pruned


def macs_of(model):
    return int(MacsCost().total(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "vit-tiny-cifar10"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--targets", default="0.2,0.35,0.5", help="MACs reductions")
    parser.add_argument("--num-calibration", type=int, default=1024)
    parser.add_argument("--seeds", default="0", help="calibration seeds, comma-separated")
    parser.add_argument("--normalizations", default="mean,max,none", help="global normalisations compared")
    parser.add_argument("--eval-limit", type=int, default=None, help="random test subset (default: all 10,000)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    model = transformers.AutoModelForImageClassification.from_pretrained(args.model).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(args.model)
    train = hf_sparsify.load_image_dataset(args.data, split="train")
    test = hf_sparsify.load_image_dataset(args.data, split="test")
    eval_indices = random_indices(len(test), args.eval_limit, 1234) if args.eval_limit else list(range(len(test)))
    evaluation = preprocess(test, processor, eval_indices)

    labels = torch.cat([b["labels"] for b in evaluation])

    @torch.no_grad()
    def all_logits(m):
        return torch.cat([m(pixel_values=b["pixel_values"]).logits.double() for b in evaluation])

    dense_logits = all_logits(model)

    def metrics(m):
        """Top-1 and cross-entropy, and fidelity to the dense model: top-1 agreement and mean KL(dense || pruned)."""
        logits = all_logits(m)
        log_p = logits.log_softmax(-1)
        return {
            "accuracy": float((logits.argmax(-1) == labels).double().mean()),
            "loss": float(torch.nn.functional.nll_loss(log_p, labels)),
            "agreement": float((logits.argmax(-1) == dense_logits.argmax(-1)).double().mean()),
            "kl": float(torch.nn.functional.kl_div(log_p, dense_logits.log_softmax(-1), log_target=True, reduction="batchmean")),
            "num_samples": int(labels.numel()),
        }

    dense_macs = macs_of(model)
    rows = [{"variant": "dense", "target": 0.0, "seed": None, **metrics(model), "macs": dense_macs, "widths": None}]
    print(json.dumps(rows[-1]))
    default = hf_sparsify.VBPConfig(pruning_ratio=0.5).global_normalization
    settings = {f"vbp global ({n} norm.)": dict(global_normalization=n) for n in args.normalizations.split(",")}
    settings["vbp per_layer"] = dict(allocation="per_layer")
    # the paper's fold (the all-token mean in every block) beside the default head-token fold of the last block
    settings[f"vbp global ({default} norm.), all-token fold"] = dict(global_normalization=default, compensation_tokens="all")
    for seed in [int(s) for s in args.seeds.split(",")]:
        indices = random_indices(len(train), args.num_calibration, seed)
        calibration = preprocess(train, processor, indices, batch_size=128)
        groups = select_groups(get_adapter(model), ["mlp"])
        moments = collect_activation_moments(model, {g.name: g.observe for g in groups}, calibration, disable_tqdm=True)
        for target in [float(t) for t in args.targets.split(",")]:
            for name, extra in settings.items():
                for compensation in (True, False) if "compensation_tokens" not in extra else (True,):
                    pruned = hf_sparsify.prune(
                        model, hf_sparsify.VBPConfig(target_macs_reduction=target, compensation=compensation, **extra), calibration, disable_tqdm=True
                    )
                    widths = {k: v["width"] for k, v in pruned.pruning_result.layers.items()}
                    variant = name + (" + compensation" if compensation else ", no compensation")
                    rows.append({"variant": variant, "target": target, "seed": seed, **metrics(pruned), "macs": macs_of(pruned), "widths": list(widths.values())})
                    print(json.dumps(rows[-1]))
                if extra == dict(global_normalization=default):  # once per target (not again for the all-token fold)
                    for compensation in (True, False):  # the same widths, neurons chosen by weight magnitude
                        pruned = l1_same_widths(model, widths, moments, compensation)
                        variant = f"L1 of fc1 rows, widths of vbp global ({default} norm.)" + (" + compensation" if compensation else ", no compensation")
                        rows.append({"variant": variant, "target": target, "seed": seed, **metrics(pruned), "macs": macs_of(pruned), "widths": list(widths.values())})
                        print(json.dumps(rows[-1]))

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"evaluation: {len(eval_indices)} CIFAR-10 test images; calibration: {args.num_calibration} random train images, seeds {args.seeds}")
    print()
    print("| MACs removed (target) | variant | seed | MACs/image | widths | top-1 | loss | agreement with dense | KL(dense‖pruned) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        removed = 1 - r["macs"] / dense_macs
        print(
            f"| {removed:.1%} ({r['target']:.0%}) | {r['variant']} | {r['seed']} | {r['macs'] / 1e6:.2f} M | {r['widths']} | "
            f"{r['accuracy']:.2%} | {r['loss']:.3f} | {r['agreement']:.2%} | {r['kl']:.4f} |"
        )
    print()
    print("Means over seeds:")
    print("| MACs target | variant | top-1 (mean ± sd) | loss | agreement | KL |")
    print("|---|---|---|---|---|---|")
    groups: dict = {}
    for r in rows[1:]:
        groups.setdefault((r["target"], r["variant"]), []).append(r)
    for (target, variant), rs in groups.items():
        acc = torch.tensor([r["accuracy"] for r in rs], dtype=torch.float64) * 100
        sd = f" ± {acc.std().item():.2f}" if len(rs) > 1 else ""
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("loss", "agreement", "kl")}
        print(f"| {target:.0%} | {variant} | {acc.mean().item():.2f}%{sd} | {mean['loss']:.3f} | {mean['agreement']:.2%} | {mean['kl']:.4f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
