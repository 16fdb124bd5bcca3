"""The ``hf-sparsify`` command line.

```
hf-sparsify prune MODEL --method METHOD --sparsity S [--config FILE] [--calibration DATA] --output DIR [--overwrite]
                  [--compressed] [--push-to-hub REPO [--private]]
hf-sparsify card DIR [--repo-id REPO] [--metrics FILE] [--template FILE] [--force]
hf-sparsify evaluate MODEL --data DATA [--split test] [--limit N] [--batch-size B]
hf-sparsify report MODEL [--json]
hf-sparsify demo [--method M] [--sparsity S] [--output DIR]
```

MODEL is a Hub id or a local folder; DATA is a Hub dataset id, a ``datasets`` folder, a parquet file, a folder of
split-named parquet files, or an image folder. User errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "CLIError"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------- helpers
def _quiet_transformers(verbose: bool) -> None:
    import transformers

    if not verbose:
        transformers.logging.set_verbosity_error()


def _load_model(name: str):
    from .modeling import AutoSparseModelForImageClassification

    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise CLIError(f"model {name!r} not found: give a local folder or a Hub model id.")
    try:
        return AutoSparseModelForImageClassification.from_pretrained(name)
    except OSError as err:
        raise CLIError(f"could not load model {name!r}: {err}") from None


def _load_processor(name: str, required: bool):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        if required:
            raise CLIError(f"could not load the image processor of {name!r} ({err}); the model folder needs a preprocessor_config.json.") from None
        return None


def check_output_dir(path: Path, overwrite: bool, *, marker: str | None = None) -> None:
    """Refuse an output folder that already holds files, unless ``overwrite`` (or it holds only a previous
    output that carries ``marker``)."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"--output {path} is a file, not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        if marker and (path / marker).exists():
            return
        raise CLIError(f"--output {path} already holds files; choose another folder or pass --overwrite to replace them.")


def write_output(path: Path, save) -> None:
    """Write into a fresh sibling folder, then swap it in: a failure never leaves a half-written or emptied output."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder has the output's own name (inside a hidden temporary folder): what save() writes that
    # names the folder (the model card's snippet) names the final output.
    root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging = root / path.name
    staging.mkdir()
    try:
        save(staging)
        if path.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            backup.rmdir()
            path.rename(backup)
            staging.rename(path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build_config(args) -> Any:
    from .configuration import PruningConfig, PruningConfigError, get_method

    overrides: dict[str, Any] = {}
    if args.config:
        config = PruningConfig.from_pretrained(args.config)
        if args.method and args.method != config.method:
            raise PruningConfigError(
                f"--config {args.config} is a {config.method!r} configuration but --method is {args.method!r}; "
                "drop --method or give a configuration of that method."
            )
        entry = get_method(config.method)
    else:
        if not args.method:
            raise CLIError("give --method (e.g. --method magnitude) or --config FILE.")
        entry = get_method(args.method)
        config = None
    cls = entry.config_class
    if args.sparsity is not None:
        overrides[cls.target_field] = args.sparsity
    if getattr(args, "target_macs_reduction", None) is not None:
        overrides["target_macs_reduction"] = args.target_macs_reduction
        if args.sparsity is None and cls.target_field in cls._field_names():
            overrides[cls.target_field] = None
    if args.num_calibration_samples is not None:
        overrides["num_calibration_samples"] = args.num_calibration_samples
    if args.batch_size is not None:
        overrides["calibration_batch_size"] = args.batch_size
    if args.seed is not None:
        overrides["seed"] = args.seed
    if config is None:
        if args.sparsity is None and "target_macs_reduction" not in overrides:
            raise CLIError("give --sparsity S (the fraction to remove, e.g. 0.5) or a --config FILE that sets it.")
        return cls(**overrides)
    return config.replace(**overrides) if overrides else config


# --------------------------------------------------------------------------------------------- commands
def cmd_prune(args) -> int:
    import hf_sparsify

    output = Path(args.output)
    check_output_dir(output, args.overwrite)
    if args.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():
            raise CLIError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (checked before pruning).")
    config = _build_config(args)
    model = _load_model(args.model)
    entry = hf_sparsify.configuration.get_method(config.method)
    processor = _load_processor(args.model, required=False)
    calibration = None
    if entry.pruner_class.needs_calibration_data:
        if not args.calibration:
            raise CLIError(f"{config.method} reads calibration data: pass --calibration DATA (a dataset with images and labels).")
        if processor is None:
            _load_processor(args.model, required=True)
        calibration = hf_sparsify.load_image_dataset(args.calibration, split=args.calibration_split)
    pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor, inplace=True, device=args.device, disable_tqdm=args.disable_tqdm)

    def save(directory: Path) -> None:
        if processor is not None:  # first, so that the model card's snippet loads it
            processor.save_pretrained(directory)
        pruned.save_pretrained(directory, compressed=args.compressed)

    write_output(output, save)
    report = hf_sparsify.sparsity_report(pruned, compute_macs=False)
    line = {"output": str(output), "method": config.method, "sparsity": round(report.sparsity, 6), "params": report.total_params}
    if args.push_to_hub:
        line["commit_url"] = str(hf_sparsify.push_to_hub(output, args.push_to_hub, private=args.private or None))
    print(json.dumps(line))
    return 0


def cmd_card(args) -> int:
    from .hub.card import CARD_NAME, ModelCardTemplateError, normalize_metrics, record_card_data, write_model_card

    directory = Path(args.directory)
    try:
        if args.metrics:
            try:
                metrics = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise CLIError(f"--metrics {args.metrics}: cannot read a JSON file ({err}).") from None
            record_card_data(directory, metrics=normalize_metrics(metrics))
        path = write_model_card(directory, repo_id=args.repo_id, template=args.template, force=args.force)
    except ModelCardTemplateError as err:
        raise CLIError(str(err)) from None
    except ValueError as err:
        raise CLIError(f"--metrics {args.metrics}: {err}") from None
    if path is None:
        raise CLIError(f"{directory / CARD_NAME} was not written by hf_sparsify and was kept; pass --force to replace it.")
    print(path)
    return 0


def cmd_evaluate(args) -> int:
    import hf_sparsify

    from .evaluation import evaluate_model

    model = _load_model(args.model)
    processor = _load_processor(args.model, required=True)
    data = hf_sparsify.load_image_dataset(args.data, split=args.split)
    metrics = evaluate_model(model, data, image_processor=processor, batch_size=args.batch_size, limit=args.limit, seed=args.seed, device=args.device, disable_tqdm=args.disable_tqdm)
    print(json.dumps({**metrics, "model": args.model, "data": args.data, "split": args.split}))
    return 0


def cmd_report(args) -> int:
    import hf_sparsify

    model = _load_model(args.model)
    report = hf_sparsify.sparsity_report(model)
    print(report.to_json() if args.json else report)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(method=args.method, sparsity=args.sparsity, output=Path(args.output), overwrite=args.overwrite, disable_tqdm=args.disable_tqdm)
    return 0


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .configuration import available_methods

    methods = available_methods()
    parser = argparse.ArgumentParser(prog="hf-sparsify", description="Prune, evaluate and report Hugging Face vision models.")
    parser.add_argument("--verbose", action="store_true", help="show transformers' warnings and info messages")
    sub = parser.add_subparsers(dest="command", metavar="{prune,evaluate,report,card,demo}")
    sub.required = True

    def common(p):
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model loads)")
        p.add_argument("--disable-tqdm", action="store_true", help="hide progress bars")

    p = sub.add_parser("prune", help="prune a model and save it")
    p.add_argument("model", help="Hub model id or local folder")
    p.add_argument("--method", choices=methods, help="pruning method")
    p.add_argument("--sparsity", type=float, help="fraction to remove (for vbp: the fraction of MLP neurons)")
    p.add_argument("--target-macs-reduction", type=float, help="vbp: fraction of the model's MACs to remove (instead of --sparsity)")
    p.add_argument("--config", help="a pruning_config.json (or a folder holding one); flags override its fields")
    p.add_argument("--calibration", help="calibration data: Hub dataset id, datasets folder, parquet file or image folder")
    p.add_argument("--calibration-split", default="train", help="split of the calibration data (default: train)")
    p.add_argument("--num-calibration-samples", type=int, help="calibration images drawn at random (seeded)")
    p.add_argument("--batch-size", type=int, help="calibration batch size")
    p.add_argument("--seed", type=int, help="seed of the random choices (default: the config's, 0)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder that already holds files")
    p.add_argument("--compressed", action="store_true", help="save the compact sparse format (model.compressed.safetensors)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the output to this Hub repo, in one commit (needs a token)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    common(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="top-1 accuracy and loss on a dataset, as one JSON line")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="evaluate on N rows drawn at random (seeded)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="per-layer sparsity, parameters and MACs")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("card", help="(re)write the model card (README.md + chart) of a pruned model folder")
    p.add_argument("directory", help="a folder written by save_pretrained / hf-sparsify prune")
    p.add_argument("--repo-id", help="the Hub id the card's snippet loads (default: the folder name)")
    p.add_argument("--metrics", help='a JSON file of evaluation results: {"dataset": .., "before": {"accuracy": ..}, "after": {..}}')
    p.add_argument("--template", help="a Jinja2 card template (default: the bundled one)")
    p.add_argument("--force", action="store_true", help="replace a README.md that hf_sparsify did not write")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("demo", help="prune the bundled tiny ViT on bundled CIFAR-10 data, evaluate before/after")
    p.add_argument("--method", default=None, choices=methods, help="pruning method (default: the best available)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction to remove (default: the method's demo setting)")
    p.add_argument("--output", default="hf_sparsify_demo", help="where to write the pruned model (default: ./hf_sparsify_demo)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--disable-tqdm", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers(args.verbose)
    if getattr(args, "disable_tqdm", False):
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    from .adapters import UnsupportedModelError
    from .configuration import PruningConfigError
    from .data import CalibrationDataError
    from .hub import HubPushError
    from .methods.base import PruningError
    from .modeling import SparseCheckpointError
    from .observers.fisher import GradientError

    user_errors = (
        CLIError, PruningConfigError, CalibrationDataError, UnsupportedModelError, HubPushError, PruningError, GradientError,
        SparseCheckpointError, FileNotFoundError, NotADirectoryError,
    )
    try:
        return args.func(args)
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
