"""`hpc-mm submit`: one job, a sweep (one job array), or a pipeline (several job files, each stage
after the one before). It goes through the Python API (hpc_mm/api.py), whose warnings become
`warning:` lines here, and prints what was submitted for a person, or as JSON."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import warnings
from pathlib import Path

from hpc_mm.errors import Problem, UserError, warn
from hpc_mm.run.sweepdir import label


@contextlib.contextmanager
def warning_lines():
    """The API's warnings (HpcMmWarning), printed as the command line's `warning:` lines."""
    from hpc_mm.api import HpcMmWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HpcMmWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, HpcMmWarning):
                    warn(Problem("", str(w.message)))


def submit(args: argparse.Namespace, load) -> int:
    """`load(job file, extra --set items)`: the job as the command line's flags make it."""
    from hpc_mm import api
    from hpc_mm.slurm import submit as slurm_submit

    jobs = args.jobs
    if args.sweep:
        if len(jobs) > 1:
            raise UserError.one("--sweep", "sweeps one job file", "submit the pipeline's stages without --sweep")
        if args.dry_run:
            return slurm_submit.dry_run_sweep(
                lambda extra: _with_after(load(jobs[0], extra), args.after),
                _with_after(load(jobs[0], []), args.after),
                args.sweep,
                args.run_dir,
                args.template_dir,
                args.max_parallel,
                args.zip,
                as_json=args.json,
            )
        with warning_lines():
            sweep = api.sweep_with(
                lambda extra: _with_after(load(jobs[0], extra), args.after),
                args.sweep,
                args.run_dir,
                zipped=args.zip,
                max_parallel=args.max_parallel,
                template_dir=args.template_dir,
            )
        tasks = [(run.job_id, run.path, values) for run, values in zip(sweep.tasks, sweep.values)]
        return _report(sweep.job_id, sweep.path, tasks, args)
    if args.max_parallel or args.zip:
        flag = "--max-parallel" if args.max_parallel else "--zip"
        raise UserError.one(flag, "is for sweeps", "add --sweep KEY=V1,V2,...")
    specs = [load(job, []) for job in jobs]
    if len(specs) > 1:
        if args.run_dir or args.dry_run:
            flag = "--run-dir" if args.run_dir else "--dry-run"
            raise UserError.one(flag, "takes one job file", "each stage of a pipeline gets a run directory of its own")
        with warning_lines():
            stages = api.pipeline(specs, after=args.after, template_dir=args.template_dir)
        return _report_pipeline(stages, args)
    if args.dry_run:
        spec = _with_after(specs[0], args.after)
        return slurm_submit.dry_run(spec, args.run_dir, args.template_dir, as_json=args.json)
    with warning_lines():
        run = api.submit(
            specs[0], args.run_dir, after=args.after, template_dir=args.template_dir, new_code=args.new_code
        )
    return _report(run.job_id, run.path, [], args)


def _with_after(spec, after: list[str]):
    return dataclasses.replace(spec, after=list(spec.after) + list(after)) if after else spec


def _wait(runs, args) -> dict:
    from hpc_mm.slurm.wait import wait

    return wait([(job_id, Path(path)) for job_id, path in runs], quiet=args.json)


def _ok(states: dict) -> int:
    from hpc_mm.slurm.query import JobState

    return 0 if all(s is JobState.COMPLETED for s in states.values()) else 1


def _report_pipeline(stages, args) -> int:
    from hpc_mm.run.rundir import RunDir

    said = [
        {"job_id": r.job_id, "run_dir": str(r.path), "after": list(RunDir(r.path).info.after or {})} for r in stages
    ]
    if args.json:
        print(json.dumps(said))
    else:
        for stage, s in zip(stages, said):
            waits = f", after job {', '.join(s['after'])}" if s["after"] else ""
            print(f"submitted job {s['job_id']} ({stage.name}{waits})\n  run directory: {s['run_dir']}", flush=True)
    if not args.wait:
        return 0
    return _ok(_wait([(r.job_id, r.path) for r in stages], args))


def _report(job_id: str, run_dir: Path, tasks: list, args) -> int:
    listed = [{"job_id": j, "run_dir": str(r), "values": v} for j, r, v in tasks]
    said = {"job_id": job_id, "run_dir": str(run_dir), **({"tasks": listed} if listed else {})}
    if args.json and not args.wait:
        print(json.dumps(said))
    elif not args.json and tasks:
        print(f"submitted job array {job_id} ({len(tasks)} tasks)\nsweep directory: {run_dir}", flush=True)
        for t in listed:
            print(f"  {t['job_id']}  {label(t['values'])}  {Path(t['run_dir']).name}", flush=True)
    elif not args.json:
        print(f"submitted job {job_id}\nrun directory: {run_dir}", flush=True)
    if not args.wait:
        return 0
    states = _wait([(j, r) for j, r, _ in tasks] or [(job_id, run_dir)], args)
    if args.json:
        print(json.dumps({**said, "states": {j: s.value for j, s in states.items()}}))
    return _ok(states)
