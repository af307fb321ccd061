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


def _remote(args):
    """Where the command runs: a login node over ssh, or here (None)."""
    from hpc_mm.cli.remote import REMOTE_COMMANDS, Remote

    if args.command not in REMOTE_COMMANDS:
        if args.remote:
            raise UserError.one(
                "--remote",
                f"{args.command} runs here, not on a login node",
                f"use it with {', '.join(REMOTE_COMMANDS)}",
            )
        return None
    return Remote.find(args.remote)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        remote = _remote(args)
        if remote is not None:
            from hpc_mm.cli.commands import job_loader
            from hpc_mm.cli.remote import run_remote

            return run_remote(remote, args, argv, job_loader(args))
        return COMMANDS[args.command](args)
    except UserError as exc:
        return print_problems(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpc-mm logs ... | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
