"""``optimum-cli sparsify``: the ``hf-sparsify`` commands under optimum's command line.

optimum-cli imports every module of the ``optimum.commands.register`` namespace (PEP 420: no ``__init__.py``
here) when it starts and registers the commands listed in its ``REGISTER_COMMANDS``. This module is installed
into that namespace by hf_sparsify's package (``pyproject.toml``), so ``optimum-cli sparsify prune ...`` is
``hf-sparsify prune ...``. It stays light: building the parser imports no torch.
"""

from __future__ import annotations

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class SparsifyCommand(BaseOptimumCLICommand):
    """``optimum-cli sparsify {prune,evaluate,report,card,push,demo}``: the commands of ``hf-sparsify``."""

    COMMAND = CommandInfo(name="sparsify", help="prune, evaluate, report and publish vision models (hf-sparsify)")

    @staticmethod
    def parse_args(parser) -> None:
        from hf_sparsify.cli.parser import ONE_LINE_ERRORS_PARSER, add_commands

        parser.add_argument("--verbose", action="store_true", help="show transformers' warnings and info messages")
        subparsers = parser.add_subparsers(
            dest="hf_sparsify_subcommand", metavar="{prune,evaluate,report,card,push,demo}", required=True, parser_class=ONE_LINE_ERRORS_PARSER
        )
        add_commands(subparsers)

    def run(self) -> None:
        from hf_sparsify.cli.parser import run

        status = run(self.args)
        if status:
            sys.exit(status)


REGISTER_COMMANDS = [SparsifyCommand]
