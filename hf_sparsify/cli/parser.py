"""The ``hf-sparsify`` argument parser and entry point.

Building the parser imports only argparse and the methods' configuration modules (not torch): the ``prune``
command's method options are generated from the configuration dataclasses (:mod:`.options`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..configuration import available_methods, get_method
from ..errors import HfSparsifyError
from . import commands, speed
from .commands import DTYPES
from .options import TARGET_FLAG, add_method_options, positive_int

__all__ = ["ONE_LINE_ERRORS_PARSER", "add_commands", "build_parser", "main", "run"]

PROG = "hf-sparsify"
#: the attribute of the parsed arguments holding the command's function (not ``func``: optimum-cli uses that)
COMMAND_ATTRIBUTE = "hf_sparsify_command"


class _ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``error: ...`` line, exit status 2, like every other user
    error of the command."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


#: the parser class of the commands (``optimum-cli sparsify`` builds its sub-commands with it too)
ONE_LINE_ERRORS_PARSER = _ArgumentParser


def _add_common(parser: argparse.ArgumentParser, *, device: bool = True, dtype: bool = True) -> None:
    if dtype:
        parser.add_argument(
            "--dtype", choices=DTYPES, default="auto",
            help="precision the model is loaded (and pruned) in; auto: the dtype its checkpoint was saved in (default: auto)",
        )  # fmt: skip
    if device:
        parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps... (default: where the model loads, the CPU)")
    parser.add_argument("--disable-tqdm", action="store_true", help="hide progress bars")


def add_commands(subparsers) -> None:
    """Add the commands (``prune``, ``evaluate``, ``report``, ``card``, ``push``, ``benchmark``, ``export``, ``demo``) to ``subparsers``
    (those of ``hf-sparsify``, or of ``optimum-cli sparsify``)."""
    methods = available_methods()

    p = subparsers.add_parser(
        "prune", help="prune a model and save it",
        description="Prune a model with one of the registered methods and save it (weights, config, pruning_config.json, "
        "summary, model card). The method's options below are generated from its configuration class; "
        f"{TARGET_FLAG} sets each method's target field.",
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("model", help="Hub model id or local folder")
    p.add_argument("--method", choices=methods, help="pruning method")
    targets = {}
    for method in methods:
        targets.setdefault(get_method(method).config_class.target_field, []).append(method)
    p.add_argument(
        TARGET_FLAG, type=float, metavar="S",
        help="the method's target: " + "; ".join(f"{field} for {', '.join(m)}" for field, m in targets.items()),
    )  # fmt: skip
    p.add_argument("--config", help="a pruning_config.json (or a folder or Hub repo holding one); flags override its fields")
    p.add_argument("--calibration", help="calibration data: Hub dataset id, datasets folder, parquet file or image folder")
    p.add_argument("--calibration-split", default="train", help="split of the calibration data (default: train)")
    p.add_argument("--output", required=True, help="output folder: new, empty, or an earlier output of hf-sparsify with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier hf-sparsify output in --output (files it did not write are never replaced)")
    p.add_argument("--compressed", action="store_true", help="save the compact sparse format (model.compressed.safetensors)")
    p.add_argument("--save-dtype", choices=DTYPES[1:], help="save the pruned model in this dtype (default: the dtype it was loaded and pruned in)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the output to this Hub repo, in one commit (the token is checked before pruning)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    _add_common(p)
    reserved = {s for action in p._actions for s in action.option_strings}
    p.set_defaults(**{COMMAND_ATTRIBUTE: commands.cmd_prune, "method_options": add_method_options(p, reserved)})

    p = subparsers.add_parser("evaluate", help="top-1 accuracy and loss on a dataset, as one JSON line", allow_abbrev=False)
    p.add_argument("model", help="Hub model id or local folder (with its preprocessor_config.json)")
    p.add_argument("--data", required=True, help="Hub dataset id, datasets folder, parquet file or image folder")
    p.add_argument("--split", default="test", help="split of the data (default: test)")
    p.add_argument("--limit", type=positive_int, help="evaluate on N rows drawn at random (seeded)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (default: 0)")
    _add_common(p)
    p.set_defaults(**{COMMAND_ATTRIBUTE: commands.cmd_evaluate})

    p = subparsers.add_parser("report", help="per-layer sparsity, parameters and MACs", allow_abbrev=False)
    p.add_argument("model", help="Hub model id or local folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="precision the model is loaded in (default: auto, its saved dtype)")
    p.set_defaults(**{COMMAND_ATTRIBUTE: commands.cmd_report})

    p = subparsers.add_parser("card", help="(re)write the model card (README.md + chart) of a pruned model folder", allow_abbrev=False)
    p.add_argument("directory", help="a folder written by save_pretrained / hf-sparsify prune")
    p.add_argument("--repo-id", help="the Hub id the card's snippet loads (default: the folder name)")
    p.add_argument("--metrics", help='a JSON file of evaluation results: {"dataset": .., "before": {"accuracy": ..}, "after": {..}}')
    p.add_argument("--template", help="a Jinja2 card template (default: the bundled one)")
    p.add_argument("--force", action="store_true", help="replace a README.md that hf_sparsify did not write")
    p.add_argument("--benchmark", action="store_true", help="time the model against --baseline now and add the measured speed-up to the card")
    p.add_argument("--benchmark-json", metavar="FILE", help="add the speed-up of a saved `hf-sparsify benchmark --baseline` JSON line to the card")
    speed.add_benchmark_options(p, baseline_help="with --benchmark: the dense model (default: the base model the folder records)")
    p.set_defaults(**{COMMAND_ATTRIBUTE: speed.cmd_card})

    p = subparsers.add_parser(
        "push", help="upload a saved model folder to the Hub in one commit (e.g. after a failed --push-to-hub)", allow_abbrev=False
    )
    p.add_argument("directory", help="a folder written by hf-sparsify prune or save_pretrained")
    p.add_argument("repo_id", help="the Hub repo, namespace/name (or name in your own namespace); created if needed")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--compressed", action="store_true", help="upload the compact sparse format (the folder is read, not changed)")
    p.add_argument("--commit-message", help="the commit's message")
    p.set_defaults(**{COMMAND_ATTRIBUTE: commands.cmd_push})

    speed.add_speed_commands(subparsers, COMMAND_ATTRIBUTE)

    from ..demo import DEFAULT_METHOD  # noqa: PLC0415 - a constant of a light module

    p = subparsers.add_parser("demo", help="prune the bundled tiny ViT on bundled CIFAR-10 data, evaluate before/after", allow_abbrev=False)
    p.add_argument("--method", default=None, choices=methods, help=f"pruning method (default: {DEFAULT_METHOD})")
    p.add_argument("--sparsity", type=float, default=None, help="the method's target (default: the method's demo setting)")
    p.add_argument("--output", default="hf_sparsify_demo", help="where to write the pruned model (default: ./hf_sparsify_demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of another command there")
    p.add_argument("--disable-tqdm", action="store_true", help="hide progress bars")
    p.set_defaults(**{COMMAND_ATTRIBUTE: commands.cmd_demo})


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-sparsify`` parser (builds in well under a second: no torch import)."""
    parser = _ArgumentParser(prog=PROG, description="Prune, evaluate, report and publish Hugging Face vision models.", allow_abbrev=False)
    parser.add_argument("--verbose", action="store_true", help="show transformers' warnings and info messages")
    subparsers = parser.add_subparsers(dest="command", metavar="{prune,evaluate,report,card,push,benchmark,export,demo}", required=True)
    add_commands(subparsers)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error (any :class:`~hf_sparsify.HfSparsifyError`, or a file error) is
    printed as one ``error: ...`` line and gives exit status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        if not getattr(args, "verbose", False):
            transformers.logging.set_verbosity_error()
        if getattr(args, "disable_tqdm", False):
            import datasets

            transformers.utils.logging.disable_progress_bar()
            datasets.disable_progress_bars()
        return getattr(args, COMMAND_ATTRIBUTE)(args)
    except (HfSparsifyError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hf-sparsify`` command: ``hf-sparsify prune MODEL --method cap --sparsity 0.5 --output DIR``..."""
    args = build_parser().parse_args(argv)
    return run(args)
