"""The SOSP paper's expand-then-prune study on the bundled tiny ViT (CIFAR-10): widen the layers a global structured
pruning pruned least, train briefly, and prune back to the same MACs; against a uniform ×1.1 widening.

1. Evaluate the dense model, prune it with a global structured method (``--method``: ``sosp-h`` when it is
   registered, else ``vbp``) to remove ``--macs-reduction`` of its MACs, evaluate it, and print the bottleneck report
   (``hf_sparsify.bottleneck_report``): the groups the ranking pruned least are the bottleneck candidates.
2. Three arms start from the dense model, get the same short training (``--train-steps`` AdamW steps on the train
   split with random crops and flips, plain ``transformers.Trainer``), and are pruned back with the same method to
   **the MACs of the model of step 1** (the same budget):

   * ``train only``: no widening (what the training alone does to the result);
   * ``bottlenecks ×2``: the candidates widened ×2 (``hf_sparsify.expand``; new units have zero outgoing weights, so
     the widened model starts with the dense model's function);
   * ``uniform ×1.1``: every MLP widened ×1.1.

   Optionally every pruned model (step 1's too) is fine-tuned ``--finetune-steps`` more steps the same way.
3. Top-1 on the CIFAR-10 test split (all 10,000 images, or ``--eval-samples`` drawn at random with ``--seed``),
   MACs and parameters of every model; ``results.json`` and a Markdown table in ``--output-dir``.

The data: ``--data`` is a folder with ``train.parquet`` and ``test.parquet`` (default ``../shared/data/cifar10``).
When it has none, the script says so and uses the bundled CIFAR-10 sample instead: its 1,000 calibration images for
pruning and training and its 2,000 test images for evaluation (a quick run, not comparable with the full data).
Plain ``Trainer`` is used rather than ``SparseTrainer``: ``SparseTrainer`` keeps zero weights at zero, which would keep
the new units' zero outgoing weights from ever growing.

Small settings for a CPU (minutes)::

    python examples/expand_then_prune.py --train-steps 300 --eval-samples 2000

Over three seeds, with the results written to benchmarks/RESULTS.md: ``python benchmarks/bench_expand_then_prune.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify.assets import DEMO_DATA_DIR, DEMO_MODEL_DIR  # noqa: E402
from hf_sparsify.structured import MacsCost, count_params  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_cifar10 import CifarTensors, collate, device_name, evaluate, load_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("train only", "bottlenecks ×2", "uniform ×1.1")


def default_method() -> str:
    """``sosp-h`` when the installed hf_sparsify has it, else ``vbp``."""
    return "sosp-h" if "sosp-h" in hf_sparsify.available_methods() else "vbp"


def macs_config(method: str, reduction: float, args) -> hf_sparsify.PruningConfig:
    """The method's configuration removing ``reduction`` of the model's MACs, with a global allocation."""
    config_class = hf_sparsify.configuration.get_method(method).config_class
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    values: dict = {"seed": args.seed, "num_calibration_samples": args.num_calibration}
    if "target_macs_reduction" in fields:  # VBP
        values["target_macs_reduction"] = reduction
    elif "budget_unit" in fields:  # SOSP: pruning_ratio of the budget unit
        values[config_class.target_field] = reduction
        values["budget_unit"] = "macs"
    else:
        raise SystemExit(f"{method} has no MACs budget (no target_macs_reduction or budget_unit field): choose a structured method.")
    if "allocation" in fields:
        values["allocation"] = "global"
    if args.round_to is not None and "round_to" in fields:
        values["round_to"] = args.round_to
    return config_class(**values)


def macs(model) -> int:
    return int(MacsCost().total(model))


def train(model, dataset, steps: int, args, output_dir: Path):
    """``steps`` AdamW steps with a cosine schedule (plain transformers Trainer); returns the model."""
    if steps <= 0:
        return model
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, steps // 10),
        weight_decay=0.05,
        max_grad_norm=1.0,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(steps, 1),
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # quiet: the script prints its own lines
    trainer.train()
    return trainer.model.eval()


def kept_new_units(widened, pruned, dense_widths: dict[str, int]) -> dict[str, int]:
    """How many of the units each widened group kept after pruning are new ones (added by ``expand``): the kept
    producer rows are exact copies of rows of the widened model, so their positions tell."""
    from hf_sparsify.adapters import get_adapter

    out = {}
    for group in get_adapter(pruned).structure_groups():
        before = get_adapter(widened).structure_groups()
        wide = next(g for g in before if g.name == group.name)
        if wide.num_units == dense_widths[group.name]:
            continue
        rows = widened.get_submodule(wide.producers[0]).weight.detach()
        kept = pruned.get_submodule(group.producers[0]).weight.detach()
        matches = [(rows == row).all(dim=1).nonzero().flatten() for row in kept]
        if any(m.numel() == 0 for m in matches):
            continue  # the method changed the kept rows: positions unknown
        out[group.name] = sum(1 for m in matches if int(m[0]) // group.unit_size >= dense_widths[group.name])
    return out


def calibration_loader(dataset, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR), help="dense model folder (default: the bundled tiny ViT)")
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "cifar10"), help="folder with train.parquet and test.parquet ('bundled': the bundled sample)")
    parser.add_argument("--method", default=None, help="a global structured method (default: sosp-h when registered, else vbp)")
    parser.add_argument("--macs-reduction", type=float, default=0.35, help="fraction of the dense model's MACs removed (every arm ends at the same MACs)")
    parser.add_argument("--factor", type=float, default=2.0, help="widening of the bottleneck candidates")
    parser.add_argument("--uniform-factor", type=float, default=1.1, help="widening of every MLP in the baseline arm")
    parser.add_argument("--init-std", type=float, default=None, help="std of the new units' incoming weights (default: each layer's own weight std)")
    parser.add_argument("--candidates", type=int, default=None, help="widen the k groups pruned least (default: the report's rule, median + margin)")
    parser.add_argument("--margin", type=float, default=0.1, help="the report's rule: kept fraction ≥ the median of the kind + margin")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of every arm before it is pruned back")
    parser.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps after pruning (every pruned model)")
    parser.add_argument("--train-samples", type=int, default=None, help="train on a random subset of the train split")
    parser.add_argument("--eval-samples", type=int, default=None, help="evaluate on a random subset of the test split (default: all of it)")
    parser.add_argument("--num-calibration", type=int, default=512, help="calibration images of each pruning (random train images)")
    parser.add_argument("--round-to", type=int, default=None, help="kept widths multiple of this (default: the method's own)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/expand_then_prune")
    return parser


def load_data(args, processor):
    data_dir = Path(args.data)
    if args.data != "bundled" and (data_dir / "train.parquet").is_file() and (data_dir / "test.parquet").is_file():
        splits, label = (data_dir, "train", data_dir, "test"), f"CIFAR-10 ({data_dir})"
    else:
        if args.data != "bundled":
            print(
                f"{data_dir} has no train.parquet/test.parquet: using the bundled CIFAR-10 sample instead (1,000 calibration "
                "images for pruning and training, 2,000 test images for evaluation); figures are not comparable with the full data."
            )
        splits, label = (DEMO_DATA_DIR, "calibration", DEMO_DATA_DIR, "evaluation"), "bundled CIFAR-10 sample"
    train_dir, train_split, test_dir, test_split = splits
    mean, std = processor.image_mean, processor.image_std
    train_images, train_labels = load_split(train_dir, train_split, args.train_samples, args.seed)
    test_images, test_labels = load_split(test_dir, test_split, args.eval_samples, 1234)  # one test subset for every seed
    return (
        CifarTensors(train_images, train_labels, mean, std, augment=True),
        CifarTensors(train_images, train_labels, mean, std),
        CifarTensors(test_images, test_labels, mean, std),
        label,
    )


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.set_seed(args.seed)
    method = args.method or default_method()
    output_dir = Path(args.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()

    processor = AutoImageProcessor.from_pretrained(args.model)
    train_set, calibration_set, test_set, data_label = load_data(args, processor)
    dense = AutoModelForImageClassification.from_pretrained(args.model).to(device).eval()
    dense_macs = macs(dense)
    dense_widths = {g.name: g.num_units for g in hf_sparsify.get_adapter(dense).structure_groups()}
    results: dict = {
        "method": method,
        "macs_reduction": args.macs_reduction,
        "data": data_label,
        "eval_samples": len(test_set),
        "train_steps": args.train_steps,
        "finetune_steps": args.finetune_steps,
        "seed": args.seed,
        "device": device_name(device),
        "dense": {**evaluate(dense, test_set, device), "macs": dense_macs, "params": count_params(dense)},
    }
    print(f"dense: top-1 {results['dense']['accuracy']:.2%}, {dense_macs / 1e6:.2f} M MACs ({data_label}, {len(test_set)} test images)")

    def prune(model, target_macs: int):
        reduction = 1 - target_macs / macs(model)
        config = macs_config(method, reduction, args)
        return hf_sparsify.prune(model, config, calibration_loader(calibration_set, config.effective_batch_size, args.seed), disable_tqdm=True)

    def record(model, **extra) -> dict:
        return {**evaluate(model, test_set, device), "macs": macs(model), "params": count_params(model), **extra}

    # 1. prune the dense model, read the bottlenecks
    reference = prune(copy.deepcopy(dense), round((1 - args.macs_reduction) * dense_macs))
    budget = macs(reference)
    report = hf_sparsify.bottleneck_report(reference, margin=args.margin)
    print(report)
    candidates = report.candidates(k=args.candidates)
    if not candidates:
        raise SystemExit("the report has no bottleneck candidate (every group kept about the same fraction): pass --candidates K to widen the K groups pruned least.")
    results["report"] = report.to_dict()
    results["widened"] = [row.name for row in candidates]
    results["pruned"] = {"after_pruning": record(reference)}
    print(f"pruned ({method}, {args.macs_reduction:.0%} of the MACs): top-1 {results['pruned']['after_pruning']['accuracy']:.2%}")

    with tempfile.TemporaryDirectory() as scratch:
        if args.finetune_steps:
            reference = train(reference, train_set, args.finetune_steps, args, Path(scratch) / "finetune-pruned")
            results["pruned"]["after_finetuning"] = record(reference)

        # 2. the arms: widen (or not), train, prune back to the same MACs
        for arm in ARMS:
            t0 = time.perf_counter()
            model = copy.deepcopy(dense)
            if arm == "bottlenecks ×2":
                model = hf_sparsify.expand(model, candidates, args.factor, seed=args.seed, init_std=args.init_std)
            elif arm == "uniform ×1.1":
                model = hf_sparsify.expand(model, "all", args.uniform_factor, seed=args.seed, init_std=args.init_std)
            entry: dict = {"widened_macs": macs(model), "widened_params": count_params(model)}
            model = train(model, train_set, args.train_steps, args, Path(scratch) / arm)
            entry["after_training"] = record(model)
            pruned = prune(model, budget)
            entry["widths"] = {name: layer["width"] for name, layer in pruned.pruning_result.layers.items()}
            entry["kept_new_units"] = kept_new_units(model, pruned, dense_widths)
            entry["after_pruning"] = record(pruned)
            if args.finetune_steps:
                pruned = train(pruned, train_set, args.finetune_steps, args, Path(scratch) / f"finetune-{arm}")
                entry["after_finetuning"] = record(pruned)
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            results[arm] = entry
            final = entry.get("after_finetuning", entry["after_pruning"])
            print(
                f"{arm}: trained {entry['after_training']['accuracy']:.2%} at {entry['widened_macs'] / 1e6:.2f} M MACs, "
                f"pruned back {entry['after_pruning']['accuracy']:.2%}"
                + (f", fine-tuned {final['accuracy']:.2%}" if args.finetune_steps else "")
                + f" at {entry['after_pruning']['macs'] / 1e6:.2f} M MACs; widths {list(entry['widths'].values())}"
                + (f", new units kept {entry['kept_new_units']}" if entry["kept_new_units"] else "")
                + f" ({entry['seconds']} s)"
            )

    results["table"] = markdown_table(results)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = "python examples/expand_then_prune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"wrote {output_dir / 'results.json'} ({results['total_seconds']} s)")
    return results


def markdown_table(results: dict) -> str:
    stages = ["after_pruning"] + (["after_finetuning"] if results.get("finetune_steps") else [])
    head = "| model | MACs | params | " + " | ".join(f"top-1 {s.replace('_', ' ')}" for s in stages) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(stages)]
    dense = results["dense"]
    lines.append(f"| dense | {dense['macs'] / 1e6:.2f} M | {dense['params']:,} | {dense['accuracy']:.2%}" + " |" * len(stages))
    for name in ("pruned", *ARMS):
        entry = results[name]
        label = "pruned directly" if name == "pruned" else f"{name}, trained, pruned back"
        final = entry["after_pruning"]
        cells = " | ".join(f"{entry[s]['accuracy']:.2%}" if s in entry else "" for s in stages)
        lines.append(f"| {label} | {final['macs'] / 1e6:.2f} M | {final['params']:,} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
