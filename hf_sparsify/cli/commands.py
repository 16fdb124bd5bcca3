"""The commands of ``hf-sparsify``: one function per command, taking the parsed arguments, returning the exit status.

torch, transformers and datasets are imported inside the commands, never at module level, so that
``hf-sparsify --help`` and ``hf-sparsify prune --help`` start at once. Errors meant for the user are
:class:`~hf_sparsify.HfSparsifyError` subclasses; :func:`hf_sparsify.cli.parser.run` prints them as one line.
Messages about the run (the plan, warnings, notes) go to stderr; the result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..configuration import PruningConfig, PruningConfigError, get_method
from ..errors import HfSparsifyError
from .options import TARGET_FLAG, MethodOption, method_overrides

__all__ = ["CLIError", "DTYPES", "cmd_card", "cmd_demo", "cmd_evaluate", "cmd_prune", "cmd_push", "cmd_report"]

#: the values of ``--dtype`` (``auto``: the dtype the checkpoint was saved in, as transformers 5 loads it)
DTYPES = ("auto", "float32", "bfloat16", "float16")


class CLIError(HfSparsifyError, ValueError):
    """A user error on the command line: printed as one ``error: ...`` line, exit status 2."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- loading
def check_device(name: str | None):
    """``--device`` as a ``torch.device`` (``None`` when not given); refused when this machine lacks it."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {name!r} is not a device ({err}); use cpu, cuda, cuda:1, mps...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(
                f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}: torch.cuda.is_available() is False); "
                "use --device cpu, or a torch build with CUDA on a machine with a GPU."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CLIError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CLIError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu.")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
            raise CLIError(f"--device {name}: no {device.type} device is available here; use --device cpu.")
    return device


def _torch_dtype(name: str | None):
    import torch

    return None if name in (None, "auto") else getattr(torch, name)


def load_model(name: str, dtype: str = "auto"):
    """The image classifier at ``name`` (a local folder or a Hub id), loaded strictly, in ``dtype``."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    from ..modeling import AutoSparseModelForImageClassification

    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise CLIError(f"model {name!r} not found: give a local folder or a Hub model id.")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise CLIError(f"could not load model {name!r}: {err}") from None
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "no image classifier"
        raise CLIError(
            f"{name} is a {config.model_type!r} model ({architectures}), not an image classifier: hf-sparsify works on "
            "image classification models and their backbones (ViT, DeiT, DINOv2, ConvNeXt, ConvNeXtV2...)."
        )
    try:
        return AutoSparseModelForImageClassification.from_pretrained(name, config=config, dtype=_torch_dtype(dtype) or "auto")
    except OSError as err:
        raise CLIError(f"could not load model {name!r}: {err}") from None


def load_processor(name: str, required: bool):
    """The image processor saved with the model (``None`` when absent and not ``required``)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - transformers raises several types for a missing or bad file
        if required:
            raise CLIError(f"could not load the image processor of {name!r} ({err}); the model folder needs a preprocessor_config.json.") from None
        return None


def _model_dtype(model) -> Any:
    return next(model.parameters()).dtype


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_model_runs(model, dataset, processor, *, what: str, seed: int = 0) -> None:
    """Run the model on two images of ``dataset`` (with their labels checked) before a long run, so that images of
    the wrong size or a dtype the device cannot compute fail now with one clear line."""
    import torch

    from ..data import CalibrationDataError, _validate, dataset_batches, find_columns, random_indices

    image_column, _ = find_columns(dataset)
    if len(dataset) == 0:
        raise CalibrationDataError(f"{what} holds no rows.")
    rows = random_indices(len(dataset), 2, seed)
    batch = next(dataset_batches(dataset, rows, len(rows), None if image_column == "pixel_values" else processor, image_column=image_column, label_column=None))
    _validate(batch, getattr(model.config, "num_channels", None))
    pixel_values = batch["pixel_values"].to(device=next(model.parameters()).device, dtype=_model_dtype(model))
    try:
        with torch.no_grad():
            model(pixel_values=pixel_values)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError) as err:
        text = " ".join(str(err).split())
        if "not implemented for" in text:
            raise CLIError(
                f"the model cannot run in {_dtype_name(_model_dtype(model))} on {pixel_values.device.type} ({text}); use --dtype float32 or a GPU."
            ) from None
        size = getattr(model.config, "image_size", None)
        expected = f" (the model's config says image_size={size})" if size else ""
        raise CalibrationDataError(
            f"the model cannot run on the images of {what}: pixel_values of shape {tuple(pixel_values.shape)} gave \"{text}\". "
            f"Give images of the size the model expects{expected}: resize them, or use an image processor with do_resize=True."
        ) from None


# --------------------------------------------------------------------------------------------- prune
def build_config(args: argparse.Namespace, options: list[MethodOption]) -> PruningConfig:
    """The pruning configuration that ``--config``, ``--method``, ``--sparsity`` and the generated flags describe."""
    if args.config:
        config = PruningConfig.from_pretrained(args.config)
        if args.method and args.method != config.method:
            raise PruningConfigError(
                f"--config {args.config} is a {config.method!r} configuration but --method is {args.method!r}; "
                "drop --method or give a configuration of that method."
            )
    else:
        if not args.method:
            raise CLIError("give --method (e.g. --method magnitude) or --config FILE.")
        config = None
    method = config.method if config is not None else args.method
    config_class = get_method(method).config_class
    overrides = method_overrides(args, options, method)
    target = config_class.target_field
    if args.sparsity is not None:
        if target in overrides:
            flag = "--" + target.replace("_", "-")
            raise CLIError(f"{TARGET_FLAG} and {flag} both set {method}'s {target}: give one of them.")
        overrides[target] = args.sparsity
    if config is not None:
        return config.replace(**overrides) if overrides else config
    if target not in overrides:
        if next(_default(f) for f in dataclasses.fields(config_class) if f.name == target) is not None:
            raise CLIError(f"give {TARGET_FLAG} S (the fraction to remove, e.g. 0.5) or a --config FILE that sets it.")
    return config_class(**overrides)


def _check_push_access(repo_id: str) -> None:
    """Find a missing, refused or read-only token, or an unreachable Hub, before pruning."""
    from ..hub import HubPushError, check_push_access

    try:
        check_push_access(repo_id)
    except HubPushError as err:
        raise HubPushError(f"--push-to-hub {repo_id}: {err} (checked before pruning; nothing was pruned)") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _settings(config: PruningConfig) -> str:
    """The target and the fields that differ from their defaults, e.g. ``sparsity=0.5, num_grads=64``."""
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init and getattr(config, f.name) != _default(f)}
    target = changed.pop(config.target_field, config.target)
    shown = ({config.target_field: target} if target is not None else {}) | changed
    return ", ".join(f"{name}={value!r}" for name, value in shown.items())


def _print_plan(args, config, model, calibration, device) -> None:
    from ..adapters import get_adapter

    entry = get_method(config.method)
    adapter = get_adapter(model, allow_generic=config.targets is not None)
    params = sum(p.numel() for p in model.parameters())
    _note(
        f"hf-sparsify prune: {config.method} ({_settings(config)}) on {args.model} "
        f"({type(model).__name__}, {params / 1e6:.2f} M parameters, {_dtype_name(_model_dtype(model))}, {device})"
    )
    if calibration is not None:
        rows = len(calibration)
        images = config.calibration_images() or rows
        line = f"  calibration: {images:,} images in batches of {config.effective_batch_size} from {args.calibration} (split {args.calibration_split!r}, {rows:,} rows"
        if images > rows:
            line += f"; {-(-images // rows)} passes, each drawn with a new seed"
        _note(line + ")")
    for line in entry.pruner_class(config).plan(model, adapter, device=device):
        _note(f"  {line}")


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from ..api import prune
    from ..data import check_dataset_labels, load_image_dataset
    from ..hub import HubPushError, push_to_hub
    from ..io.output import OutputFolder
    from ..report import sparsity_report

    config = build_config(args, args.method_options)
    entry = get_method(config.method)
    device = check_device(args.device)
    protect = [p for p in (args.model, args.calibration) if p and Path(p).exists()]
    with OutputFolder(args.output, command="prune", overwrite=args.overwrite, protect=protect) as output:
        for note in output.notes:
            _note(f"note: {note}")
        if args.push_to_hub:
            _check_push_access(args.push_to_hub)
        model = load_model(args.model, args.dtype)
        processor = load_processor(args.model, required=False)
        calibration = None
        if entry.pruner_class.needs_calibration_data:
            if not args.calibration:
                raise CLIError(f"{config.method} reads calibration data: pass --calibration DATA (a dataset with images and labels).")
            if processor is None:
                load_processor(args.model, required=True)
            calibration = load_image_dataset(args.calibration, split=args.calibration_split)
            if device is not None:
                model.to(device)
            check_dataset_labels(calibration, num_labels=getattr(model.config, "num_labels", None), required=config.needs_labels(), what=f"--calibration {args.calibration}", method=config.method)
            check_model_runs(model, calibration, processor, what=f"--calibration {args.calibration}", seed=config.seed)
        run_device = device or next(model.parameters()).device
        dtype = _model_dtype(model)
        if dtype in (torch.float16, torch.bfloat16) and run_device.type == "cpu":
            _note(
                f"warning: the model is in {_dtype_name(dtype)} and is pruned on the CPU: that is slow, and some operations have no "
                f"{_dtype_name(dtype)} CPU kernel. --dtype float32 prunes in full precision (--save-dtype {_dtype_name(dtype)} saves it "
                "as now); a GPU (--device cuda) prunes half precision fast."
            )
        _print_plan(args, config, model, calibration, run_device)
        pruned = prune(model, config, calibration, image_processor=processor, inplace=True, device=device, disable_tqdm=args.disable_tqdm)
        if args.save_dtype:
            pruned.to(_torch_dtype(args.save_dtype))

        def save(directory: Path) -> None:
            if processor is not None:  # first, so that the model card's snippet loads it
                processor.save_pretrained(directory)
            pruned.save_pretrained(directory, compressed=args.compressed)

        output.write(save)
    report = sparsity_report(pruned, compute_macs=False)
    result = getattr(pruned, "pruning_result", None)
    summary = dict(getattr(result, "summary", None) or {})
    line: dict[str, Any] = {"output": str(args.output), "method": config.method, **summary}
    if "sparsity" not in summary and not entry.pruner_class.changes_shapes:
        line["sparsity"] = round(report.sparsity, 6)
    line.update(params=report.total_params, dtype=_dtype_name(_model_dtype(pruned)))
    if args.push_to_hub:
        try:
            line["commit_url"] = str(push_to_hub(output.path, args.push_to_hub, private=args.private or None))
        except HubPushError as err:
            print(json.dumps(line))
            raise HubPushError(f"{err} The pruned model is saved in {args.output}: retry with `hf-sparsify push {args.output} {args.push_to_hub}`.") from None
    print(json.dumps(line))
    return 0


# --------------------------------------------------------------------------------------------- others
def cmd_push(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub

    folder = Path(args.directory)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder: give the folder `hf-sparsify prune --output` (or save_pretrained) wrote.")
    if not (folder / "config.json").is_file():
        raise CLIError(f"{folder} holds no config.json: it is not a saved model.")
    kwargs = {"private": args.private or None, "commit_message": args.commit_message}
    if args.compressed:
        model = load_model(str(folder))
        info = push_to_hub(model, args.repo_id, compressed=True, image_processor=load_processor(str(folder), required=False), **kwargs)
    else:
        info = push_to_hub(folder, args.repo_id, **kwargs)
    print(json.dumps({"folder": str(folder), "repo_id": args.repo_id, "commit_url": str(info)}))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from ..hub.card import CARD_NAME, write_model_card
    from ..io.summary import normalize_metrics, record_card_data

    directory = Path(args.directory)
    if args.metrics:
        try:
            metrics = normalize_metrics(json.loads(Path(args.metrics).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise CLIError(f"--metrics {args.metrics}: cannot read a JSON file ({err}).") from None
        except ValueError as err:
            raise CLIError(f"--metrics {args.metrics}: {err}") from None
        record_card_data(directory, metrics=metrics)
    path = write_model_card(directory, repo_id=args.repo_id, template=args.template, force=args.force)
    if path is None:
        raise CLIError(f"{directory / CARD_NAME} was not written by hf_sparsify and was kept; pass --force to replace it.")
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import load_image_dataset
    from ..evaluation import evaluate_model

    device = check_device(args.device)
    model = load_model(args.model, args.dtype)
    processor = load_processor(args.model, required=True)
    data = load_image_dataset(args.data, split=args.split)
    if device is not None:
        model.to(device)
    metrics = evaluate_model(model, data, image_processor=processor, batch_size=args.batch_size, limit=args.limit, seed=args.seed, disable_tqdm=args.disable_tqdm)
    print(json.dumps({**metrics, "model": args.model, "data": args.data, "split": args.split, "dtype": _dtype_name(_model_dtype(model))}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import sparsity_report

    report = sparsity_report(load_model(args.model, args.dtype))
    print(report.to_json() if args.json else report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(method=args.method, sparsity=args.sparsity, output=Path(args.output), overwrite=args.overwrite, disable_tqdm=args.disable_tqdm)
    return 0
