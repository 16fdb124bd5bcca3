"""The speed commands of ``hf-sparsify``: ``benchmark``, ``export``, and the measured speed row of ``card --benchmark``.

```
hf-sparsify benchmark MODEL [--baseline MODEL] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--batch-size B]
                      [--image-size N] [--runtime eager|compile|onnxruntime|semi-structured]
                      [--min-repeats N] [--max-seconds S] [--precision P]
hf-sparsify export MODEL OUTPUT [--image-size N] [--dtype D] [--opset N] [--no-verify] [--overwrite]
hf-sparsify card DIR --benchmark [--baseline MODEL] [--device D] [--dtype D] [--batch-size B] [--runtime R]
hf-sparsify card DIR --benchmark-json FILE        # a line `hf-sparsify benchmark --baseline ...` printed
```

torch is imported inside the commands only, as in :mod:`.commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .commands import CLIError
from .commands import cmd_card as _cmd_card
from .options import positive_int

__all__ = ["SPEED_DTYPES", "add_benchmark_options", "add_speed_commands", "cmd_benchmark", "cmd_card", "cmd_export", "record_card_benchmark"]

SPEED_DTYPES = ("fp32", "fp16", "bf16")
RUNTIME_CHOICES = ("eager", "compile", "onnxruntime", "semi-structured")


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_benchmark_options(parser: argparse.ArgumentParser, *, baseline_help: str) -> None:
    """The options of a benchmark run (shared by ``benchmark`` and ``card --benchmark``)."""
    parser.add_argument("--baseline", metavar="MODEL", help=baseline_help)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:1...) (default: cpu)")
    parser.add_argument("--dtype", choices=SPEED_DTYPES, default="fp32", help="precision the models run in (default: fp32)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward (default: 1)")
    parser.add_argument("--image-size", type=positive_int, help="square input size in pixels (default: the model config's image_size)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="eager", help="what runs the model (default: eager PyTorch)")
    parser.add_argument("--min-repeats", type=positive_int, default=10, help="timed runs of each model at least (default: 10)")
    parser.add_argument("--max-seconds", type=_positive_float, default=120.0, help="stop timing after this long (default: 120)")
    parser.add_argument("--precision", type=_positive_float, default=0.02, help="stop once each median's 95%% interval is within ± this fraction (default: 0.02)")


def add_speed_commands(subparsers, command_attribute: str) -> None:
    """Add ``benchmark`` and ``export`` to ``subparsers``."""
    p = subparsers.add_parser(
        "benchmark", help="measured latency of a model (and its speed-up over a baseline), as one JSON line",
        description="Time a model in a runtime on random images: median and p90 latency, spread, throughput, MACs, parameters. "
        "With --baseline both models are timed in the same interleaved rounds and their ratio is printed. Warm-up, then "
        "rounds until each median's 95%% confidence interval is within ±--precision (at least --min-repeats, at most "
        "--max-seconds).",
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("model", help="Hub model id or local folder (any checkpoint hf_sparsify loads: dense, pruned, structured, compressed)")
    add_benchmark_options(p, baseline_help="a second model timed in the same run (the dense model the pruned one came from); the ratio is printed")
    p.set_defaults(**{command_attribute: cmd_benchmark})

    p = subparsers.add_parser(
        "export", help="export a (pruned) model to ONNX and check it in ONNX Runtime",
        description="Export with torch.onnx (dynamo exporter), per-layer widths and head counts included; the graph is run in "
        "ONNX Runtime and compared with PyTorch (|Δ| ≤ 1e-4 + 1e-3·|value| in fp32). OUTPUT is a .onnx file, or a folder "
        "that receives model.onnx, config.json and the model's preprocessor_config.json.",
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("model", help="Hub model id or local folder")
    p.add_argument("output", help="a path ending in .onnx, or a folder")
    p.add_argument("--image-size", type=positive_int, help="square input size (default: the config's image_size); the batch is dynamic")
    p.add_argument("--dtype", choices=SPEED_DTYPES, help="export precision (default: the checkpoint's)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset version (default: torch's)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model.onnx")
    p.set_defaults(**{command_attribute: cmd_export})


def _rule(args: argparse.Namespace):
    from ..speed.timing import TimingRule

    return TimingRule(min_repeats=args.min_repeats, max_seconds=args.max_seconds, precision=args.precision)


def _run_benchmark(model: str, args: argparse.Namespace, baseline: str | None):
    from ..speed import benchmark

    if baseline is not None:
        _note(f"hf-sparsify benchmark: {model} against {baseline}, {args.runtime}, {args.device}, {args.dtype}, batch {args.batch_size} (interleaved)")
    else:
        _note(f"hf-sparsify benchmark: {model}, {args.runtime}, {args.device}, {args.dtype}, batch {args.batch_size}")
    return benchmark(
        model, baseline=baseline, device=args.device, dtype=args.dtype, batch_size=args.batch_size, image_size=args.image_size, runtime=args.runtime, rule=_rule(args)
    )


def cmd_benchmark(args: argparse.Namespace) -> int:
    result = _run_benchmark(args.model, args, args.baseline)
    for note in result.notes:
        _note(f"note: {note}")
    if result.baseline is not None:
        _note(
            f"speed-up {result.speedup:.3f}× (paired {result.speedup_paired:.3f}×; {result.baseline['median_ms']:.3f} → {result.timing['median_ms']:.3f} ms "
            f"per batch); MACs ratio {result.macs_ratio:.3f}×: {result.speedup_vs_macs:.0%} of it"
        )
    print(result.to_json())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..speed import export_onnx

    exported = export_onnx(args.model, args.output, image_size=args.image_size, dtype=args.dtype, opset_version=args.opset, verify=not args.no_verify, overwrite=args.overwrite)
    for note in exported.notes:
        _note(f"note: {note}")
    print(json.dumps(exported.to_dict()))
    return 0


# --------------------------------------------------------------------------------------------- card --benchmark
def _recorded_base_model(directory: Path) -> str | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (config.get("hf_sparsify") or {}).get("base_model")


def _entry_from_json(path: str) -> dict[str, Any]:
    from ..speed.benchmark import card_entry_from_dict

    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        data = json.loads(lines[-1])
    except (OSError, IndexError, json.JSONDecodeError) as err:
        raise CLIError(f"--benchmark-json {path}: cannot read a JSON line of `hf-sparsify benchmark` ({err}).") from None
    return card_entry_from_dict(data, what=f"--benchmark-json {path}")


def record_card_benchmark(directory: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """For ``card --benchmark`` / ``--benchmark-json``: the measured speed row, stored in the folder's
    ``sparsity_summary.json`` (replacing an earlier row of the same device, runtime, dtype and batch). Returns it."""
    from ..io.summary import normalize_speedups, read_summary, record_card_data

    if not getattr(args, "benchmark", False) and not getattr(args, "benchmark_json", None):
        return None
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise CLIError(f"{directory} is not a saved model folder (no config.json): give the folder `hf-sparsify prune --output` wrote.")
    if getattr(args, "benchmark", False) and getattr(args, "benchmark_json", None):
        raise CLIError("give --benchmark (run one now) or --benchmark-json FILE (a line `hf-sparsify benchmark` printed), not both.")
    if args.benchmark_json:
        entry = _entry_from_json(args.benchmark_json)
    else:
        baseline = args.baseline or _recorded_base_model(directory)
        if not baseline:
            raise CLIError(f"--benchmark needs the dense model to compare with: pass --baseline DENSE_MODEL ({directory} records no base model).")
        if not args.baseline:
            _note(f"note: the baseline is the recorded base model {baseline} (--baseline overrides it)")
        try:
            result = _run_benchmark(str(directory), args, baseline)
        except CLIError:
            raise
        entry = result.card_entry()
        _note(f"speed-up {result.speedup:.3f}× on {entry['device']} ({args.runtime}, {result.dtype}, batch {result.batch_size}); MACs ratio {result.macs_ratio:.3f}×")
    existing = normalize_speedups((read_summary(directory).get("card") or {}).get("speedups"))
    same = lambda e: all(e.get(k) == entry.get(k) for k in ("device", "runtime", "dtype", "batch_size"))  # noqa: E731
    record_card_data(directory, speedups=[e for e in existing if not same(e)] + [entry])
    return entry


def cmd_card(args: argparse.Namespace) -> int:
    """``hf-sparsify card``: with ``--benchmark`` / ``--benchmark-json``, the measured speed row is recorded first,
    then the card is (re)written as without them."""
    from ..hub.card import CARD_NAME, is_generated_card

    directory = Path(args.directory)
    readme = directory / CARD_NAME
    if (args.benchmark or args.benchmark_json) and readme.exists() and not args.force and not is_generated_card(readme):
        raise CLIError(f"{readme} was not written by hf_sparsify: pass --force to replace it with a card that shows the benchmark.")
    record_card_benchmark(directory, args)
    return _cmd_card(args)
