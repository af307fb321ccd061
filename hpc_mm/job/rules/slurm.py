"""Rules for what the job asks Slurm for: nodes, time limit (and the grace before it), gres and
GPUs, the words Slurm takes, extra sbatch options, the training step's srun options."""

from __future__ import annotations

import re

from hpc_mm.errors import Problem
from hpc_mm.job import slurmtime
from hpc_mm.job.rules.common import control_characters, shown
from hpc_mm.job.spec import JobSpec

_GPUS = re.compile(r"([A-Za-z0-9_.-]+:)?\d+")
# srun options hpc-mm sets for the training step itself (slurm.srun_args may add any other).
_SRUN_OWNED = (
    "--ntasks",
    "--ntasks-per-node",
    "--nodes",
    "--output",
    "--error",
    "--kill-on-bad-exit",
    "-N",
    "-n",
    "-o",
    "-e",
    "--cpus-per-task",
    "-c",
)
_GRES = re.compile(r"[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)?:\d+(,[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)?:\d+)*")
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
_SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:|&()\[\]*!-]+")
# What may not appear in a value sbatch reads from an #SBATCH line: quotes and shell
# characters (the line must mean the same to sbatch and to a reader), '#' (sbatch reads the
# rest of the line as a comment), and line breaks (they end the line early).
_SBATCH_UNSAFE = set("\"'\\`$;#")


def sbatch_value_problem(value: str) -> str | None:
    if any(c in _SBATCH_UNSAFE for c in value) or not value.isprintable():
        return f"{value!r} contains quotes, '$', '`', ';', '#', a backslash or a control character"
    return None


def check(spec: JobSpec) -> list[Problem]:
    s, d = spec.slurm, spec.distributed
    out = []
    if s.nodes and d.nnodes and s.nodes != d.nnodes:
        out.append(
            Problem(
                "slurm.nodes",
                f"{s.nodes} disagrees with distributed.nnodes = {d.nnodes}",
                "give the number of nodes once: slurm.nodes (or --nodes)",
            )
        )
    try:
        limit = slurmtime.limit_seconds(s.time)
    except ValueError as exc:
        out.append(Problem("slurm.time", str(exc), f"use {slurmtime.FORMATS}"))
    else:
        out += _grace_fits(spec, limit)
    if s.gres is not None and not _GRES.fullmatch(s.gres):
        out.append(Problem("slurm.gres", f"{s.gres!r} is not a gres request", "e.g. npu:8 or gpu:a100:4"))
    if s.gpus_per_node is not None and not _GPUS.fullmatch(s.gpus_per_node):
        out.append(Problem("slurm.gpus_per_node", f"{s.gpus_per_node!r} is not a GPU count", "e.g. 8 or a100:8"))
    elif s.gpus_per_node and s.gres and s.gres.split(":")[0] in ("gpu", "npu"):
        out.append(
            Problem("slurm.gpus_per_node", f"and slurm.gres = {s.gres!r} both ask for accelerators", "give one of them")
        )
    out += control_characters("slurm.python", s.python)
    for i, arg in enumerate(s.srun_args):
        out += control_characters(f"slurm.srun_args[{i}]", arg)
        if arg.split("=", 1)[0] in _SRUN_OWNED:
            out.append(
                Problem(
                    f"slurm.srun_args[{i}]",
                    f"{arg} is set by hpc-mm for the training step",
                    "use slurm.nodes, distributed.nproc_per_node or slurm.cpus_per_task",
                )
            )
    for key in ("partition", "account", "qos", "constraint", "mem"):
        value = getattr(s, key)
        if value is not None and not _SLURM_WORD.fullmatch(value):
            out.append(
                Problem(
                    f"slurm.{key}",
                    f"{value!r} has characters Slurm does not accept here",
                    "use letters, digits and . _ - , :",
                )
            )
    for key, value in s.extra_sbatch.items():
        if not _SBATCH_KEY.fullmatch(key):
            out.append(
                Problem(
                    f"slurm.extra_sbatch.{shown(key)}",
                    "is not an sbatch long option name",
                    "write it without dashes, e.g. `mail-type: END`",
                )
            )
        elif not isinstance(value, bool) and (why := sbatch_value_problem(str(value))):
            out.append(Problem(f"slurm.extra_sbatch.{key}", why, "sbatch options take plain values"))
    return out


# Slurm checks its jobs' time limits on a timer (about a minute), so the signal before the limit
# can come up to this much earlier than --signal asks.
SIGNAL_JITTER = 60


def _grace_fits(spec: JobSpec, limit: int | None) -> list[Problem]:
    """The time-limit signal comes grace_seconds (and up to a minute more) before the limit: a
    limit that leaves no training time before it is a job that can only save and requeue."""
    grace = spec.requeue.grace_seconds
    if limit is None or not spec.requeue.enabled or not 10 <= grace <= 3600:
        return []
    if grace + SIGNAL_JITTER >= limit:
        return [
            Problem(
                "requeue.grace_seconds",
                f"{grace} s of grace and up to {SIGNAL_JITTER} s of Slurm's timer "
                f"leave no training time in slurm.time = {spec.slurm.time} ({limit} s)",
                "ask for a longer slurm.time, or a shorter grace",
            )
        ]
    return []
