"""Sweeps: one job file, several values for some keys, one Slurm job array.

`hpc-mm submit JOB --sweep gpt.lr=1e-4,2e-4 --sweep gpt.seed=1,2` submits one array task per
combination. Each task is a run of its own: its own run directory (`<sweep>/task-<i>/`, with its
resolved job file and values), its own record, and its own requeue (`requeue
<array>_<task>`: never the whole array). Every task of an array gets the same resources, so a
sweep may not change what the script asks Slurm for (slurm.*, the number of nodes, ...).
`--zip` pairs the i-th values of every key instead of taking every combination; `--max-parallel N`
lets at most N tasks run at once (Slurm's `--array=0-K%N`); an array larger than the cluster's
MaxArraySize is refused with the number before anything is written.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Callable

from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import known, layout
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir, label
from hpc_mm.slurm import query
from hpc_mm.slurm.render import render_script, sbatch_options

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default MaxArraySize


def parse(sweeps: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(choices):
            raise UserError.one("--sweep", f"{item!r} is not KEY=VALUE,VALUE,...", "e.g. --sweep gpt.lr=1e-4,2e-4")
        if key.strip() in [k for k, _ in axes]:
            raise UserError.one("--sweep", f"{key.strip()} is swept twice", "give each key one --sweep")
        axes.append((key.strip(), choices))
    return axes


def count(sweeps: list[str], zipped: bool = False) -> int:
    """How many tasks the sweep makes, before any of them is loaded."""
    axes = parse(sweeps)
    if zipped:
        return len(axes[0][1]) if axes else 0
    return math.prod(len(values) for _, values in axes)


def tasks(load: Callable[[list[str]], JobSpec], sweeps: list[str], zipped: bool = False) -> list[tuple[dict, JobSpec]]:
    """(the task's values, its job) for every combination (`zipped`: the i-th value of every key
    together), each job checked on its own; a sweep larger than the cluster takes is refused first."""
    check_size(count(sweeps, zipped))
    axes = parse(sweeps)
    if zipped:
        lengths = {key: len(values) for key, values in axes}
        if len(set(lengths.values())) > 1:
            raise UserError.one(
                "--zip",
                "the swept keys have different numbers of values ("
                + ", ".join(f"{k}: {n}" for k, n in lengths.items())
                + ")",
                "--zip pairs the i-th values: give every --sweep as many",
            )
        combos = [tuple((key, values[i]) for key, values in axes) for i in range(len(axes[0][1]))]
    else:
        combos = list(itertools.product(*[[(key, value) for value in values] for key, values in axes]))
    return [(dict(combo), load([f"{k}={v}" for k, v in combo])) for combo in combos]


def check_size(count: int) -> None:
    """A job array has indices 0..count-1, which must be below the cluster's MaxArraySize (Slurm's
    default, 1001, where the cluster cannot be asked)."""
    limit = query.max_array_size() or DEFAULT_MAX_ARRAY_SIZE
    if count > limit:
        raise UserError.one(
            "--sweep",
            f"{count} tasks, but this cluster's MaxArraySize is {limit} (indices 0..{limit - 1})",
            f"sweep fewer values (split it into sweeps of at most {limit} tasks with their own --run-dir)",
        )


def prepare(
    base: JobSpec,
    combos: list[tuple[dict, JobSpec]],
    parent: Path,
    template_dir: Path | None,
    max_parallel: int | None = None,
) -> tuple[str, list[layout.RunFiles]]:
    """The array's script, and every task's run directory (in memory)."""
    folder = SweepDir(parent)
    probe = folder.task_dir(0)
    wanted = sbatch_options(base, probe)
    script = render_script(base, parent, template_dir, array=len(combos), throttle=max_parallel)
    for i, (values, spec) in enumerate(combos):
        other = sbatch_options(spec, probe) != wanted
        if other or render_script(spec, parent, template_dir, array=len(combos), throttle=max_parallel) != script:
            what = "asks Slurm for other resources than the rest" if other else "changes the array's batch script"
            raise UserError.one(
                "--sweep",
                f"task {i} ({label(values)}) {what}, which its tasks share",
                "sweep training values, not slurm.*, setup lines, the number of nodes or what the script runs",
            )
    runs = []
    for i, (_values, spec) in enumerate(combos):
        run = layout.plan_run(spec, folder.task_dir(i))
        runs.append(layout.RunFiles(run.run_dir, {**run.files, layout.SCRIPT_FILE: script}))
    return script, runs


def record(
    parent: Path,
    array_id: str,
    combos: list[tuple[dict, JobSpec]],
    runs: list[layout.RunFiles],
    max_parallel: int | None = None,
) -> None:
    listing = []
    for i, ((values, spec), run) in enumerate(zip(combos, runs)):
        job_id = f"{array_id}_{i}"
        rundir = RunDir(run.run_dir)
        rundir.record_job_id(
            job_id, array=array_id, task=i, values=values, submitted=time.time(), nodes=spec.nnodes, name=spec.name
        )
        rundir.record(Kind.SUBMITTED, StartKey(job_id, 0), nodes=spec.nnodes, values=values)
        listing.append({"task": i, "job_id": job_id, "values": values, "run_dir": str(run.run_dir)})
    SweepDir(parent).write(array_id, listing, max_parallel)
    known.remember(array_id, parent)
