"""The built-in trainer's command line: Megatron's spelling of the seed's arguments.

The same argv `hpc-mm args` prints for MindSpeed-MM's pretrain_vlm.py, plus three options of this
trainer only (--run-dir, --keep-last, --async-save). The options the job file sets are read from
the job's schema (each key declares its flag in job/spec.py), so the two never differ.
"""

from __future__ import annotations

import argparse
import typing
from typing import Literal, Union, get_args, get_origin

from hpc_mm.job.coerce import Required
from hpc_mm.job.schema import flags, options
from hpc_mm.job.spec import GPT, MM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: hpc_mm.train: {message} (hint: python -m hpc_mm.train --help)\n")


def _add(group, section: str, cls: type) -> None:
    """One option per key of `section` that has a flag, typed and defaulted as the job file is."""
    hints = typing.get_type_hints(cls)
    for key, f in options().items():
        if not key.startswith(f"{section}."):
            continue
        kind, required = hints[f.name], isinstance(f.default, Required)
        default = None if required else f.default
        if get_origin(kind) is Union:
            kind = next(a for a in get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument(f.metadata["flag"], action="store_true")
        elif get_origin(kind) is Literal:
            group.add_argument(f.metadata["flag"], choices=list(get_args(kind)), default=default, required=required)
        else:
            group.add_argument(f.metadata["flag"], type=kind, default=default, required=required)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m hpc_mm.train",
        allow_abbrev=False,
        description="hpc-mm's built-in trainer: a tiny vision-language model with MindSpeed-MM's "
        "arguments, checkpoint layout and exit-signal contract; runs on CPU, GPU or NPU.",
    )
    g = p.add_argument_group("GPT_ARGS")
    _add(g, "gpt", GPT)
    g.add_argument("--eval-interval", type=int, default=None, help="accepted for compatibility; no evaluation")
    g.add_argument("--eval-iters", type=int, default=None, help="accepted for compatibility; no evaluation")
    _add(p.add_argument_group("MM_ARGS"), "mm", MM)
    o = p.add_argument_group("OUTPUT_ARGS")
    save, load = flags("checkpoint.dir")
    o.add_argument(save, default=None)
    o.add_argument(load, default=None)
    o.add_argument(*flags("checkpoint.save_interval"), dest="save_interval", type=int, default=None)
    o.add_argument("--no-load-optim", action="store_true")
    o.add_argument("--no-load-rng", action="store_true")
    o.add_argument(
        "--override-opt_param-scheduler",
        dest="override_opt_param_scheduler",
        action="store_true",
        help="on resume, a changed schedule takes the job's values",
    )
    o.add_argument(
        "--use-checkpoint-opt_param-scheduler",
        dest="use_checkpoint_opt_param_scheduler",
        action="store_true",
        help="on resume, a changed schedule keeps the checkpoint's values",
    )
    o.add_argument(
        *flags("requeue.signal"),
        dest="exit_signal_handler",
        action="store_true",
        help="on SIGTERM: finish the iteration, save a checkpoint on every rank's agreement, exit 0",
    )
    o.add_argument("--exit-interval", type=int, default=None, help="save and exit after this many iterations")
    o.add_argument(
        *flags("distributed.backend"),
        dest="distributed_backend",
        default="gloo",
        choices=["nccl", "gloo", "hccl", "mpi"],
    )
    o.add_argument(
        *flags("fault.collective_timeout_minutes"),
        dest="distributed_timeout_minutes",
        type=int,
        default=10,
        help="collective timeout",
    )
    h = p.add_argument_group("hpc-mm")
    h.add_argument("--run-dir", default=None, help="write events.jsonl and metrics.jsonl here")
    h.add_argument("--keep-last", type=int, default=None, help="keep only the newest N checkpoints")
    h.add_argument("--async-save", action="store_true", help="write checkpoints in a background thread")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
