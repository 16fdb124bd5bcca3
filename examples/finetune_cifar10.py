"""Prune the bundled tiny ViT on CIFAR-10, then recover its accuracy with SparseTrainer and distillation.

1. evaluate the dense model (the CIFAR-10 test split);
2. prune it one-shot (``--schedule one-shot``: hf_sparsify.prune with CAP by default, calibration on the train
   split) and evaluate again; or let SparseTrainer prune gradually during training (``--schedule gradual``);
3. recover on the shuffled train split with transformers' Trainer made sparse (SparseTrainer: masks kept exact,
   knowledge distillation from the dense model), evaluate, save (reloads with
   ``hf_sparsify.AutoSparseModelForImageClassification``) and write ``results.json``.

The images are decoded once into a uint8 tensor (50,000 × 3 × 32 × 32, 150 MB) and augmented on the fly
(random crop with 4-pixel padding, horizontal flip): a standard Trainer script with a torch Dataset.

``--sparsity`` sets the method's target (its configuration's ``target_field``: VBP's ``pruning_ratio``); the method
settings (``--sparsity-distribution``, ``--num-grads``, ``--fisher-block-size``) set the fields of the same name of
the methods whose configuration has them, and default to the method's own. The saved model carries its image
processor, so ``transformers.pipeline("image-classification", model=".../model")`` and ``hf-sparsify evaluate`` load it.

Small settings for a CPU (minutes)::

    python examples/finetune_cifar10.py --method magnitude --sparsity 0.7 --epochs 1 --train-samples 10000

Full settings for a GPU::

    python examples/finetune_cifar10.py --method cap --sparsity 0.7 --epochs 30 --batch-size 256 --num-grads 4096

Run it with ``accelerate launch --multi_gpu --num_processes N examples/finetune_cifar10.py ...`` on N GPUs (the
batch size is per device).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainingArguments  # noqa: E402

import hf_sparsify  # noqa: E402
from hf_sparsify import DistillationConfig, PruningConfig, PruningSchedule, SparseTrainer  # noqa: E402
from hf_sparsify.assets import DEMO_MODEL_DIR  # noqa: E402
from hf_sparsify.data import random_indices  # noqa: E402
from hf_sparsify.evaluation import compute_accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ data
def load_split(data_dir: Path, split: str, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a parquet split into uint8 images (N, 3, 32, 32) and labels; ``limit`` rows drawn at random."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files={split: str(data_dir / f"{split}.parquet")}, split=split)
    indices = random_indices(len(ds), limit, seed) if limit else list(range(len(ds)))
    images, labels = [], []
    for start in range(0, len(indices), 2000):
        rows = ds[indices[start : start + 2000]]
        images.extend(np.asarray(img.convert("RGB"), dtype=np.uint8) for img in rows["image"])
        labels.extend(rows["label"])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.long)


class CifarTensors(torch.utils.data.Dataset):
    """Items ``{"pixel_values", "labels"}``, normalised like the model's image processor; optional augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool = False):
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        x = self.images[index].float() / 255.0
        if self.augment:
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            i, j = torch.randint(0, 9, (2,)).tolist()
            x = x[:, i : i + 32, j : j + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return {"pixel_values": (x - self.mean) / self.std, "labels": self.labels[index]}


def collate(items: list[dict]) -> dict:
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "labels": torch.stack([it["labels"] for it in items])}


@torch.no_grad()
def evaluate(model, dataset: CifarTensors, device, batch_size: int = 1000) -> dict:
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float()
        labels = batch["labels"].to(device)
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
    return {"accuracy": correct / len(dataset), "loss": loss / len(dataset), "num_samples": len(dataset)}


# ------------------------------------------------------------------------------------------------ pruning
#: flags of this script that set a field of the method's configuration; each is passed to every method whose config
#: class has that field (left out: the method's own default), and refused for a method without it
METHOD_SETTINGS = {"sparsity_distribution": str, "num_grads": int, "fisher_block_size": int}


def setting_help(name: str) -> str:
    """The help of the config field ``name``, and the methods whose configuration has it."""
    configuration = hf_sparsify.configuration
    helps, methods = [], []
    for method in configuration.available_methods():
        field = {f.name: f for f in dataclasses.fields(configuration.get_method(method).config_class)}.get(name)
        if field is not None:
            methods.append(method)
            helps.append(field.metadata.get("help", ""))
    return f"{helps[0] if helps else ''} ({', '.join(methods) or 'no registered method'})".replace("%", "%%")


def pruning_config(args) -> PruningConfig:
    """The method's configuration: ``--sparsity`` sets the field the method declares as its target
    (``config_class.target_field``), the method settings set the fields of the same name."""
    config_class = hf_sparsify.configuration.get_method(args.method).config_class
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    values = {config_class.target_field: args.sparsity, "seed": args.seed, "calibration_batch_size": args.calibration_batch_size}
    for name in METHOD_SETTINGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in fields:
            raise SystemExit(f"--{name.replace('_', '-')} is not a setting of {args.method} ({config_class.__name__}): leave it out.")
        values[name] = value
    return config_class(**values)


def calibration_loader(train: CifarTensors, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled (seeded) train batches without augmentation; each pass draws a new order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR), help="dense model folder or Hub id (default: the bundled tiny ViT)")
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "cifar10"), help="folder with train.parquet and test.parquet")
    parser.add_argument("--method", default="cap", help="any registered method: cap, magnitude, fastcap, woodfisher, ...")
    parser.add_argument("--sparsity", type=float, default=0.7, help="the method's target (its config's target_field: sparsity, VBP's pruning_ratio)")
    parser.add_argument("--pruned-model", default=None, help="skip one-shot pruning: start from a model this script (or hf_sparsify.prune) saved")
    parser.add_argument("--schedule", choices=["one-shot", "gradual"], default="one-shot")
    parser.add_argument("--initial-sparsity", type=float, default=0.4, help="gradual: sparsity of the first pruning step")
    parser.add_argument("--prune-every", type=float, default=1.0, help="gradual: epochs between pruning steps")
    parser.add_argument("--prune-until", type=float, default=None, help="gradual: epoch of the last pruning step (default: half of --epochs)")
    parser.add_argument("--cyclic-lr", action="store_true", help="gradual: CAP's cyclic linear LR restarting at every pruning step")
    settings = parser.add_argument_group("method settings", "fields of the method's configuration, for the methods that have them (default: the method's own)")
    for name, kind in METHOD_SETTINGS.items():
        settings.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=setting_help(name))
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0, help="recovery epochs (0: evaluate the one-shot model only)")
    parser.add_argument("--train-samples", type=int, default=None, help="recover on a random subset of the train split")
    parser.add_argument("--eval-samples", type=int, default=None, help="evaluate on a random subset of the test split (default: all 10,000)")
    parser.add_argument("--batch-size", type=int, default=128, help="per device")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--min-lr", type=float, default=1e-5, help="end of the cosine decay (or of each cyclic cycle)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--distill-weight", type=float, default=0.7, help="weight of the teacher term; labels get 1 - this")
    parser.add_argument("--no-distill", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers (default: 0 on CPU, 4 on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/finetune_cifar10")
    parser.add_argument("--report-to", default="none", help="tensorboard, wandb, ... (Trainer's report_to)")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)

    transformers.set_seed(args.seed)
    output_dir = Path(args.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    data_dir = Path(args.data)
    if not (data_dir / "train.parquet").is_file():
        raise SystemExit(f"{data_dir} has no train.parquet: pass --data pointing to the CIFAR-10 parquet folder.")

    started = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(args.model)
    mean, std = processor.image_mean, processor.image_std
    train_images, train_labels = load_split(data_dir, "train", args.train_samples, args.seed)
    test_images, test_labels = load_split(data_dir, "test", args.eval_samples, args.seed + 1)
    train = CifarTensors(train_images, train_labels, mean, std, augment=True)
    train_plain = CifarTensors(train_images, train_labels, mean, std)
    test = CifarTensors(test_images, test_labels, mean, std)
    print(f"data: {len(train)} train / {len(test)} test images decoded in {time.perf_counter() - started:.1f} s")

    dense = AutoModelForImageClassification.from_pretrained(args.model).to(device).eval()
    results: dict = {"method": args.method, "sparsity": args.sparsity, "schedule": args.schedule, "device": device_name(device)}
    results["dense"] = evaluate(dense, test, device)
    print(f"dense: {results['dense']['accuracy']:.2%}")

    config = pruning_config(args)
    student = copy.deepcopy(dense)
    trainer_kwargs: dict = {}
    if args.pruned_model:
        student = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(args.pruned_model).to(device)
        results["pruned_model"] = args.pruned_model
        results["one_shot"] = evaluate(student, test, device)
        print(f"loaded {args.pruned_model}: {results['one_shot']['accuracy']:.2%}")
    elif args.schedule == "one-shot":
        t0 = time.perf_counter()
        student = hf_sparsify.prune(student, config, calibration_loader(train_plain, config.effective_batch_size, args.seed), inplace=True)
        results["pruning_seconds"] = round(time.perf_counter() - t0, 1)
        results["one_shot"] = evaluate(student, test, device)
        print(f"one-shot {args.method} {args.sparsity:.0%}: {results['one_shot']['accuracy']:.2%} (pruned in {results['pruning_seconds']} s)")
    else:
        until = args.prune_until if args.prune_until is not None else max(args.epochs / 2, args.prune_every)
        trainer_kwargs = {
            "pruning_config": config,
            "calibration_dataset": train_plain,
            "schedule": PruningSchedule.gradual(
                initial_sparsity=args.initial_sparsity, start=0, end=until, every=args.prune_every, unit="epochs",
                ramp="cubic", cyclic_lr=args.cyclic_lr, min_learning_rate=args.min_lr,
            ),
        }

    workers = args.workers if args.workers is not None else (4 if on_gpu else 0)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=512,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": args.min_lr},
        warmup_steps=args.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=args.weight_decay,
        max_grad_norm=1.0,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        torch_compile=args.compile,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to=[] if args.report_to == "none" else [args.report_to],
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        seed=args.seed,
        disable_tqdm=False,
    )
    trainer = SparseTrainer(
        model=student,
        args=training_args,
        train_dataset=train,
        data_collator=collate,
        compute_metrics=compute_accuracy,
        processing_class=processor,  # saved with the model: pipeline() and `hf-sparsify evaluate` load it
        teacher_model=None if args.no_distill else dense,
        distillation=None if args.no_distill else DistillationConfig(temperature=args.temperature, distillation_weight=args.distill_weight),
        **trainer_kwargs,
    )
    t0 = time.perf_counter()
    if args.epochs > 0:
        trainer.train()
    results["train_seconds"] = round(time.perf_counter() - t0, 1)
    results["epochs"] = args.epochs
    results["train_samples"] = len(train)
    results["optimizer_steps"] = trainer.state.global_step
    if trainer.pruning_history:
        results["pruning_steps"] = trainer.pruning_history
    student = trainer.model
    results["measured_sparsity"] = round(hf_sparsify.sparsity_report(student, compute_macs=False).sparsity, 4)
    if args.epochs > 0:
        results["recovered"] = evaluate(student, test, device)
        print(
            f"recovered after {args.epochs:g} epoch(s) ({results['train_seconds']} s on {results['device']}): "
            f"{results['recovered']['accuracy']:.2%} at sparsity {results['measured_sparsity']:.2%}"
        )

    if trainer.is_world_process_zero():
        student.pruning_metrics = {
            "dataset": "CIFAR-10", "dataset_id": "cifar10", "split": "test",
            "before": {"accuracy": results["dense"]["accuracy"]},
            **({"after": {"accuracy": results["one_shot"]["accuracy"]}} if "one_shot" in results else {}),
            **({"recovered": {"accuracy": results["recovered"]["accuracy"]}} if "recovered" in results else {}),
        }
    trainer.save_model(str(output_dir / "model"))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = "python examples/finetune_cifar10.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {output_dir / 'model'} and {output_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
