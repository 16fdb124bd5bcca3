"""``hf-sparsify demo``: the embedded default job.

Prunes the bundled trained tiny ViT (CIFAR-10) with the bundled calibration sample, evaluates it before and
after on the bundled evaluation sample (2,000 test images), prints a short table and writes the pruned model to
``./hf_sparsify_demo/``. Needs no network and no ``../shared``. The demo replaces its own earlier output there
without ``overwrite``; files it did not write are never replaced (see :mod:`hf_sparsify.io.output`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .assets import DEMO_MODEL_DIR, demo_dataset

__all__ = ["run_demo", "DEFAULT_METHOD", "demo_methods"]

# The product's default: the most accurate one-shot method we measured (the bundled 1,000 calibration images give
# its 128 gradients of 8). Each method's demo settings are declared on its config class (``demo_settings``).
DEFAULT_METHOD = "cap"


def demo_methods() -> list[str]:
    """The registered methods that declare demo settings."""
    from .configuration import available_methods, get_method

    return [m for m in available_methods() if get_method(m).config_class.demo_settings]


def run_demo(method: str | None = None, sparsity: float | None = None, output: Path = Path("hf_sparsify_demo"), overwrite: bool = False, disable_tqdm: bool = False) -> dict:
    """Run the demo; returns the before/after figures printed in the table.

    The output folder is checked and locked before any work (see :class:`hf_sparsify.io.output.OutputFolder`).
    """
    from .io.output import OutputFolder

    with OutputFolder(output, command="demo", overwrite=overwrite, replace_own_output=True) as folder:
        return _run(method, sparsity, folder, disable_tqdm)


def _run(method: str | None, sparsity: float | None, folder, disable_tqdm: bool) -> dict:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_sparsify

    from .configuration import get_method
    from .evaluation import evaluate_model

    output = folder.path
    for note in folder.notes:
        print(f"note: {note}")
    method = method or DEFAULT_METHOD
    entry = get_method(method)
    settings = dict(entry.config_class.demo_settings)
    if sparsity is not None:
        settings[entry.config_class.target_field] = sparsity
    elif entry.config_class.target_field not in settings:
        settings[entry.config_class.target_field] = 0.5
    config = entry.config_class(**settings)

    model = AutoModelForImageClassification.from_pretrained(DEMO_MODEL_DIR)
    processor = AutoImageProcessor.from_pretrained(DEMO_MODEL_DIR)
    evaluation = demo_dataset("evaluation")
    calibration = demo_dataset("calibration")

    print(f"hf-sparsify demo: {method} on the bundled ViT-tiny (CIFAR-10), config {json.dumps(config.to_dict())}")
    before = evaluate_model(model, evaluation, image_processor=processor, batch_size=250, disable_tqdm=disable_tqdm)
    start = time.perf_counter()
    pruned = hf_sparsify.prune(model, config, calibration if entry.pruner_class.needs_calibration_data else None, image_processor=processor, disable_tqdm=disable_tqdm)
    seconds = time.perf_counter() - start
    after = evaluate_model(pruned, evaluation, image_processor=processor, batch_size=250, disable_tqdm=disable_tqdm)
    dense_report = hf_sparsify.sparsity_report(model)
    report = hf_sparsify.sparsity_report(pruned)
    pruned.pruning_metrics = {"before": before, "after": after, "dataset": "CIFAR-10 (bundled 2,000-image test sample)", "dataset_id": "cifar10", "split": "test"}

    def save(directory: Path) -> None:
        processor.save_pretrained(directory)  # first: the model card written by save_pretrained then shows how to load it
        pruned.save_pretrained(directory)

    folder.write(save)

    rows = [
        ("", "dense", "pruned"),
        ("top-1 accuracy", f"{before['accuracy']:.2%}", f"{after['accuracy']:.2%}"),
        ("cross-entropy", f"{before['loss']:.3f}", f"{after['loss']:.3f}"),
        ("sparsity of pruned layers", f"{dense_report.sparsity:.1%}", f"{report.sparsity:.1%}"),
        ("non-zero parameters", f"{dense_report.total_params - dense_report.zero_params:,}", f"{report.total_params - report.zero_params:,}"),
        ("MACs per image (non-zero)", f"{dense_report.macs['effective'] / 1e6:.2f} M", f"{report.macs['effective'] / 1e6:.2f} M"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print()
    for r in rows:
        print(f"  {r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}")
    print()
    print(f"Pruned in {seconds:.1f} s; accuracy on {before['num_samples']} evaluation images; saved to {output}")
    others = [m for m in demo_methods() if m != method]
    print(f"Try another method: hf-sparsify demo --method {others[0]}  (any of: {', '.join(others)})")
    return {"method": method, "before": before, "after": after, "sparsity": report.sparsity, "seconds": seconds, "output": str(output)}
