"""What a run's last checkpoint says, read without torch, against the job about to resume it: the
learning-rate schedule (Megatron's rule), the data-parallel size, the model file, iterations left.

The same rule and the same words on the login node (`submit`, `validate --run-dir`, `local`:
before anything queues) and on the nodes (the built-in trainer's resume): in the job file's units
(iterations, not Megatron's samples).

A Megatron checkpoint (`model_optim_rng.pt`, torch's zip format) keeps its training arguments and
scheduler state in `data.pkl`; that record is read with an unpickler that builds nothing but plain
values (tensors and any other object become an inert stand-in), so no code from the file runs.
"""

from __future__ import annotations

import argparse
import copyreg
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_mm.errors import Problem
from hpc_mm.job.spec import JobSpec, derive
from hpc_mm.run import checkpoints

# Megatron's OptimizerParamScheduler state (in samples) -> the job-file key, and whether it counts
# samples (then it is divided by the global batch size to read in iterations).
SCHEDULE = {
    "max_lr": ("gpt.lr", False),
    "min_lr": ("gpt.min_lr", False),
    "lr_warmup_steps": ("gpt.lr_warmup_iters", True),
    "lr_decay_steps": ("gpt.lr_decay_iters", True),
    "lr_decay_style": ("gpt.lr_decay_style", False),
    "start_wd": ("gpt.weight_decay", False),
    "wd_incr_steps": ("gpt.train_iters", True),
}
OVERRIDE, USE_CHECKPOINT = "override_opt_param_scheduler", "use_checkpoint_opt_param_scheduler"
CHANGED = "the learning-rate schedule changed since the checkpoint"
HINT = (
    f"set gpt.extra.{OVERRIDE}: true to use the job's values, or {USE_CHECKPOINT}: true to keep the "
    "checkpoint's (Megatron's rule); or start a new run directory"
)


@dataclass(frozen=True)
class Saved:
    """What a checkpoint says about the run that wrote it."""

    iteration: int
    global_batch_size: int | None
    data_parallel_size: int | None
    scheduler: dict  # Megatron's OptimizerParamScheduler.state_dict(), in samples
    model_config: dict | None = None


def in_iterations(scheduler: dict, global_batch_size: int | None) -> dict[str, Any]:
    """The scheduler's state as job-file values (iterations for what it counts in samples)."""
    out = {}
    for name, (key, samples) in SCHEDULE.items():
        if name not in scheduler:
            continue
        value = scheduler[name]
        if samples and global_batch_size:
            value = value / global_batch_size
            value = int(value) if float(value).is_integer() else value
        out.setdefault(key, value)
    return out


def changes(saved: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """`key: checkpoint -> job` for every schedule value that differs."""
    return [
        f"{key}: {_shown(saved[key])} -> {_shown(job[key])}" for key in job if key in saved and saved[key] != job[key]
    ]


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def job_schedule(
    lr: float,
    min_lr: float,
    warmup_iters: int,
    decay_iters: int | None,
    decay_style: str,
    weight_decay: float,
    train_iters: int,
) -> dict[str, Any]:
    return {
        "gpt.lr": float(lr),
        "gpt.min_lr": float(min_lr),
        "gpt.lr_warmup_iters": warmup_iters,
        "gpt.lr_decay_iters": decay_iters or train_iters,
        "gpt.lr_decay_style": decay_style,
        "gpt.weight_decay": float(weight_decay),
        "gpt.train_iters": train_iters,
    }


def check(
    saved: Saved,
    job: dict[str, Any],
    global_batch_size: int | None,
    data_parallel_size: int | None,
    extra: dict,
    train_iters: int,
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of resuming `saved` with a job whose schedule is `job` (job_schedule)."""
    errors, warnings = [], []
    changed = changes(in_iterations(saved.scheduler, saved.global_batch_size), job)
    if saved.global_batch_size and global_batch_size and saved.global_batch_size != global_batch_size:
        changed.append(
            f"gpt.global_batch_size: {saved.global_batch_size} -> {global_batch_size} (the schedule counts samples)"
        )
    override, keep = bool(extra.get(OVERRIDE)), bool(extra.get(USE_CHECKPOINT))
    if changed and not (override or keep):
        errors.append(Problem("gpt", f"{CHANGED}: " + "; ".join(changed), HINT))
    elif changed:
        wins = "the job's values win" if override else "the checkpoint's values win"
        warnings.append(Problem("gpt", f"{CHANGED}; {wins}: " + "; ".join(changed)))
    if saved.data_parallel_size and data_parallel_size and saved.data_parallel_size != data_parallel_size:
        warnings.append(
            Problem(
                "gpt",
                f"the data-parallel size changed from {saved.data_parallel_size} to "
                f"{data_parallel_size}: training resumes at the same consumed samples, not bit for "
                "bit as an unbroken run would",
            )
        )
    return errors, warnings


def for_job(spec: JobSpec, checkpoint_dir: Path) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of resuming the run's last checkpoint with `spec`, found before anything
    queues; a finished run that is resubmitted unchanged has nothing left to train."""
    saved = read(checkpoint_dir)
    if saved is None:
        return [], []
    g, derived = spec.gpt, derive(spec)
    schedule = job_schedule(
        g.lr, g.min_lr, g.lr_warmup_iters, g.lr_decay_iters, g.lr_decay_style, g.weight_decay, g.train_iters
    )
    errors, warnings = check(
        saved, schedule, derived.global_batch_size, derived.data_parallel_size, g.extra, g.train_iters
    )
    if saved.iteration >= g.train_iters:
        errors.append(
            Problem(
                "gpt.train_iters",
                f"the run's checkpoint is at iteration {saved.iteration} of {g.train_iters}: nothing is left to train",
                f"raise gpt.train_iters (with gpt.extra.{OVERRIDE}: true), or start a new run directory",
            )
        )
    return errors, warnings


def for_trainer(
    args, iteration: int, state: dict, global_batch_size: int, data_parallel_size: int
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of the built-in trainer resuming `state` (its checkpoint) with `args`."""
    saved_args = state.get("args") or {}
    saved = Saved(
        iteration, saved_args.get("global_batch_size"), state.get("data_parallel_size"), state["opt_param_scheduler"]
    )
    job = job_schedule(
        args.lr,
        args.min_lr,
        args.lr_warmup_iters,
        args.lr_decay_iters,
        args.lr_decay_style,
        args.weight_decay,
        args.train_iters,
    )
    extra = {OVERRIDE: args.override_opt_param_scheduler, USE_CHECKPOINT: args.use_checkpoint_opt_param_scheduler}
    return check(saved, job, global_batch_size, data_parallel_size, extra, args.train_iters)


# ------------------------------------------------------------------ reading a checkpoint without torch
class _Inert:
    """Stands in for anything the record would build that is not a plain value (a tensor, a storage,
    a numpy array): it takes any arguments and state, and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


class _Dict(dict):
    """An OrderedDict of the record (torch gives its state dicts attributes, such as _metadata)."""


class _PlainUnpickler(pickle.Unpickler):
    # copyreg's helpers only ever build a class this table (or _Inert) gave
    _ALLOWED = {
        ("argparse", "Namespace"): argparse.Namespace,
        ("collections", "OrderedDict"): _Dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("copyreg", "__newobj__"): copyreg.__newobj__,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
    }

    def find_class(self, module: str, name: str):
        return self._ALLOWED.get((module, name), _Inert)

    def persistent_load(self, pid):
        return _Inert()


def _stored(path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member as stored (torch writes its records uncompressed), read without the zip CRC check:
    hpc-mm's writer leaves torch's per-record CRC out (its manifest checksums the whole file)."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError("compressed")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError("no local header")
        f.seek(int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little"), 1)
        return f.read(info.compress_size)


def read_record(path: Path) -> dict | None:
    """The plain values of a torch checkpoint file's record (None when it is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = next(
                (i for i in archive.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"), None
            )
        if info is None:
            return None
        value = _PlainUnpickler(io.BytesIO(_stored(path, info))).load()
    except (
        OSError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
    ):
        return None
    return value if isinstance(value, dict) else None


def read(checkpoint_dir: Path) -> Saved | None:
    """What the run's last whole checkpoint says (None: no checkpoint, or not one this can read)."""
    iteration = checkpoints.latest_whole(checkpoint_dir)
    if iteration is None:
        return None
    files = sorted(checkpoints.iter_dir(checkpoint_dir, iteration).glob(f"mp_rank_*/{checkpoints.FILENAME}"))
    record = read_record(files[0]) if files else None
    if record is None or not isinstance(record.get("opt_param_scheduler"), dict):
        return None
    args = record.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    gbs = args.get("global_batch_size")
    dp = record.get("data_parallel_size") or args.get("data_parallel_size")
    return Saved(
        iteration=record.get("iteration", iteration),
        global_batch_size=gbs if isinstance(gbs, int) else None,
        data_parallel_size=dp if isinstance(dp, int) else None,
        scheduler=record["opt_param_scheduler"],
        model_config=record.get("model_config") if isinstance(record.get("model_config"), dict) else None,
    )
