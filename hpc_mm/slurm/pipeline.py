"""Pipelines: a stage starts only once the stages it waits for ended well.

`after:` in a job file (or `--after` on the command line) names what a stage waits for: a Slurm
job id, a run directory (its newest job), or, in `hpc-mm submit A.yaml B.yaml C.yaml`, an earlier
stage of the same submission by its job name. Several job files on one command line are one
pipeline: a stage that names nothing waits for the one before it. Each stage is a run directory
of its own. Slurm does the waiting (`--dependency=afterok:ID[:ID]`), and a stage whose
predecessor failed, timed out or was cancelled is cancelled by Slurm at once
(`--kill-on-invalid-dep=yes`) instead of waiting for ever; `status` says which stage it waited for
and how that ended.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hpc_mm.environments.slurm import is_job_id
from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import layout
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query
from hpc_mm.slurm.jobs import JobState, SlurmJob


def resolve(spec: JobSpec, stages: dict[str, tuple[str, str]] | None = None) -> tuple[JobSpec, dict[str, str | None]]:
    """The job with `after` as Slurm job ids, and {job id: its run directory, where known}. A stage
    that already failed is refused here: the new one would never start."""
    found: dict[str, str | None] = {}
    for i, item in enumerate(spec.after):
        field = f"after[{i}]" if len(spec.after) > 1 else "after"
        if stages and item in stages:
            job_id, run_dir = stages[item]
        elif is_job_id(item):
            job_id, run_dir = item, None
        elif layout.is_run_dir(Path(item)):
            job_id, run_dir = RunDir(item).info.job_id, str(Path(item).resolve())
            if job_id is None:
                raise UserError.one(field, f"the run directory {item} has no Slurm job", "name a submitted run")
        else:
            raise UserError.one(
                field,
                f"{item!r} is neither a Slurm job id, a run directory nor an earlier stage of this submission",
                "e.g. after: 12345, after: runs/convert-20261202-101500, or a job name given before this one",
            )
        found[job_id] = run_dir
    states = query.jobs(list(found)) if found and query.available() else {}
    for job_id, state in states.items():
        if state.known and state.ended and state.state is not JobState.COMPLETED:
            raise UserError.one(
                "after",
                f"job {job_id} ended {state.state.value}: a stage after it would never start",
                "resubmit that stage first, or drop it from after",
            )
    return dataclasses.replace(spec, after=list(found)), found


def chain(specs: list[JobSpec], cli_after: list[str]) -> list[JobSpec]:
    """Several job files on one command line: each stage waits for what it names, else for the one
    before it; `--after` applies to the first."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError.one("name", f"two stages are both named {dup!r}", "give every stage its own name")
    out = []
    for i, spec in enumerate(specs):
        if i == 0:
            after = list(spec.after) + list(cli_after)
        else:
            after = list(spec.after) or [specs[i - 1].name]
        later = [a for a in after if a in names[i:]]
        if later:
            raise UserError.one(
                "after", f"stage {spec.name!r} waits for {later[0]!r}, which comes later", "order the job files"
            )
        out.append(dataclasses.replace(spec, after=after))
    return out


def waits(run: RunDir, slurm: dict[str, SlurmJob]) -> list[dict]:
    """What the run waits for (or waited for): each job, its run directory, its state."""
    return [
        {
            "job_id": job_id,
            "run_dir": run_dir,
            "state": (slurm[job_id].state if job_id in slurm else JobState.UNKNOWN).value,
        }
        for job_id, run_dir in (run.info.after or {}).items()
    ]


def why_cancelled(run: RunDir, state: str, slurm: dict[str, SlurmJob]) -> str | None:
    """For a stage Slurm cancelled because what it waited for failed: which, and how it ended."""
    if state != JobState.CANCELLED.value or run.starts() and any(s.began for s in run.starts()):
        return None
    failed = [
        w for w in waits(run, slurm) if w["state"] not in (JobState.COMPLETED, JobState.UNKNOWN, JobState.PENDING)
    ]
    if not failed:
        return None
    w = failed[0]
    where = f" ({Path(w['run_dir']).name})" if w["run_dir"] else ""
    return f"cancelled by Slurm before it started: job {w['job_id']}{where}, which it waited for, ended {w['state']}"
