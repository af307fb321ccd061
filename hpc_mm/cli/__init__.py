"""hpc-mm's command line: parse flags, call one function per command, print user errors.

User errors print ``error: <field>: <problem> (hint: ...)`` and exit 2, never a traceback.
Heavy modules (torch, megatron, submitit) are imported inside the commands that need them,
so `validate`, `args`, `render` and `submit` stay quick on a login node.
"""

from __future__ import annotations

import os
import sys

from hpc_mm.cli.commands import COMMANDS
from hpc_mm.cli.parser import build_parser
from hpc_mm.errors import UserError, print_problems

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        return print_problems(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpc-mm logs ... | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
