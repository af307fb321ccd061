"""One path from a job to Slurm: prepare the run (in memory) -> render the script -> then
print it (`render`), check it with `sbatch --test-only` (`submit --dry-run`), or submit it.

A dry run writes nothing; `render` and `submit` write the run directory, and a submission
Slurm refuses takes it back. Submission goes through `query.submit` (submitit's SlurmExecutor with
its script replaced by ours); following the job is hpc-mm's own (`wait.py`, `query.jobs`). The
script never depends on submitit: it is the same text `hpc-mm render` writes for plain `sbatch`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError, warn
from hpc_mm.job.entries import contract
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import layout, lock, resume
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query, sweep
from hpc_mm.slurm.render import check_script, render_script
from hpc_mm.slurm.wait import wait as follow

# sbatch's refusals, mapped to the job-file fields that cause them (the first one the job sets).
_SBATCH_ERRORS = [
    (r"invalid partition", ("slurm.partition",), "list partitions with `sinfo -s`"),
    (r"invalid account|account.*(not|invalid)", ("slurm.account",), "list yours with `sacctmgr show assoc user=$USER`"),
    (r"invalid qos", ("slurm.qos",), "list them with `sacctmgr show qos`"),
    (
        r"gres|generic resource|gpu",
        ("slurm.gpus_per_node", "slurm.gres"),
        "check `sinfo -o '%N %G'` for the nodes' gres",
    ),
    (r"time limit", ("slurm.time",), "the partition's MaxTime is in `sinfo -s`"),
    (
        r"node count|node configuration|nodes? .*not available|more processors",
        ("slurm.nodes",),
        "ask for fewer nodes/cpus/memory or another partition (`sinfo -N -l`)",
    ),
    (r"memory", ("slurm.mem",), "ask for less memory"),
]


def _set_field(spec: JobSpec | None, fields: tuple[str, ...]) -> str:
    """The first of `fields` the job sets (the one to blame), else the last."""
    for name in fields:
        if spec is not None and getattr(spec.slurm, name.split(".", 1)[1], None) is not None:
            return name
    return fields[-1]


def sbatch_error(stderr: str, spec: JobSpec | None = None) -> UserError:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "sbatch failed"
    text = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", text)
    for pattern, fields, hint in _SBATCH_ERRORS:
        if re.search(pattern, text, re.I):
            return UserError.one(_set_field(spec, fields), f"Slurm refused the job: {text}", hint)
    return UserError.one("sbatch", text, "run `hpc-mm submit --dry-run` to see the script")


def test_only(script: str, spec: JobSpec | None = None) -> str:
    ok, text = query.test_only(script)
    if not ok:
        raise sbatch_error(text, spec)
    return text


def refuse_if_active(run_dir: Path) -> None:
    """A run directory whose run is still running or queued is not written over."""
    held = lock.holder(run_dir)
    if held is not None:
        raise UserError.one(
            "--run-dir",
            f"{run_dir} is in use by a running run ({lock.describe(held)})",
            "wait for it to end, stop it (hpc-mm cancel), or use another --run-dir",
        )
    job_id = RunDir(run_dir).info.job_id if layout.is_run_dir(run_dir) else None
    found = query.job(job_id) if job_id else None
    if found is not None and found.known and not found.ended:
        raise UserError.one(
            "--run-dir",
            f"{run_dir} belongs to job {job_id}, which is still {found.state.value.lower()}",
            f"wait for it, cancel it (hpc-mm cancel {job_id}), or use another --run-dir",
        )


def check_resume(spec: JobSpec, run_dir: Path) -> None:
    """A run directory with a checkpoint is resumed: what the checkpoint says against the job file,
    with the rules and words the entry uses on the nodes, before anything queues."""
    errors, warnings = resume.for_job(spec, layout.checkpoint_dir(spec, run_dir))
    if errors:
        raise UserError(errors)
    for problem in warnings:
        warn(problem)


def prepare(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> layout.RunFiles:
    """Everything the run directory will hold, the script included; nothing is written."""
    run = layout.plan_run(spec, run_dir)
    refuse_if_active(run.run_dir)
    check_resume(spec, run.run_dir)
    script = render_script(spec, run.run_dir, template_dir)
    return dataclasses.replace(run, files={**run.files, layout.SCRIPT_FILE: script})


def check(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> None:
    """What `prepare` refuses, without rendering the script (for `validate`)."""
    run = layout.plan_run(spec, run_dir)
    refuse_if_active(run.run_dir)
    check_resume(spec, run.run_dir)
    check_script(spec, run.run_dir, template_dir)


def render(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, output: Path | None = None) -> int:
    """Write the run directory (the script runs `hpc-mm launch` on it) and print the script."""
    run = prepare(spec, run_dir, template_dir)
    layout.create(run)
    script = run.files[layout.SCRIPT_FILE]
    print(f"run directory: {run.run_dir}", file=sys.stderr)
    if output:
        output.write_text(script)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(script)
    return 0


def dry_run(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, as_json: bool = False) -> int:
    for problem in grace_problems(spec, run_dir):
        warn(problem)
    run = prepare(spec, run_dir, template_dir)
    script = run.files[layout.SCRIPT_FILE]
    check = (
        test_only(script, spec) if query.available() else "Slurm not reachable from here: sbatch --test-only skipped"
    )
    if as_json:
        print(json.dumps({"run_dir": str(run.run_dir), "script": script, "test_only": check}))
    else:
        print(script, end="")
        print(f"# run directory (not created): {run.run_dir}\n# sbatch --test-only: {check}")
    return 0


def _require_sbatch() -> None:
    if not query.can_submit():
        raise UserError.one(
            "sbatch",
            "is not on PATH: this machine cannot submit to Slurm",
            "run on a login node, or use `hpc-mm render` and copy the script there",
        )


def grace_problems(spec: JobSpec, run_dir: Path | None, preemption=None) -> list:
    """Warnings when the run's last save would not fit in the time Slurm gives it: the partition's
    preemption GraceTime + KillWait (an entry that saves on the signal), and requeue.grace_seconds
    (the signal before the time limit). The save is the run's last measured one (with --run-dir of a
    run that has saved), else estimated from its newest checkpoint's size at 1 GB/s."""
    from hpc_mm.errors import Problem
    from hpc_mm.run import checkpoints

    if not contract(spec).trains:
        return []
    folder = layout.plan_run(spec, run_dir).run_dir
    run = RunDir(folder) if layout.is_run_dir(folder) else None
    saves = [e for e in run.events() if e.kind is Kind.CHECKPOINT and (e.get("seconds") or 0) > 0] if run else []
    if saves:
        save, how = float(saves[-1].get("seconds")), "the run's last save took"
    else:
        ckpt = checkpoints.latest_whole(run.checkpoint_dir(spec)) if run else None
        if ckpt is None:
            return []
        size = sum(
            p.stat().st_size for p in checkpoints.iter_dir(run.checkpoint_dir(spec), ckpt).rglob("*") if p.is_file()
        )
        save, how = size / 1e9, f"a checkpoint of {size / 1e9:.1f} GB takes about"
    out = []
    if save > spec.requeue.grace_seconds:
        out.append(
            Problem(
                "requeue.grace_seconds",
                f"{spec.requeue.grace_seconds} s: {how} {save:.0f} s, so the "
                "save before the time limit would be cut short",
                f"raise it above {save * 1.5:.0f}",
            )
        )
    found = preemption or (query.preemption(spec.slurm.partition) if query.available() else None)
    if found is not None and found.preempts and contract(spec).saves_on_signal(spec):
        if save > found.seconds_to_save:
            out.append(
                Problem(
                    "slurm.partition",
                    f"{found.partition or 'the default partition'} preempts ({found.mode}) with "
                    f"GraceTime {found.grace_seconds} s + KillWait {found.kill_wait_seconds} s = "
                    f"{found.seconds_to_save} s before the kill, but {how} {save:.0f} s: "
                    "a preemption would lose the work since the last save",
                    "save more often (checkpoint.save_interval), a faster checkpoint folder, or a partition with a "
                    "longer GraceTime",
                )
            )
    return out


def submit(
    spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, wait: bool = False, as_json: bool = False
) -> int:
    _require_sbatch()
    for problem in grace_problems(spec, run_dir):
        warn(problem)
    run = prepare(spec, run_dir, template_dir)
    created = layout.create(run)
    try:
        job_id = _submit(run.run_dir, run.files[layout.SCRIPT_FILE], spec)
    except BaseException:
        created.undo()
        raise
    rundir = RunDir(run.run_dir)
    rundir.record_job_id(job_id, submitted=time.time(), nodes=spec.nnodes, name=spec.name)
    rundir.record(Kind.SUBMITTED, StartKey(job_id, 0), nodes=spec.nnodes)
    if as_json and not wait:
        print(json.dumps({"job_id": job_id, "run_dir": str(run.run_dir)}))
    elif not as_json:
        print(f"submitted job {job_id}\nrun directory: {run.run_dir}", flush=True)
    if not wait:
        return 0
    state = follow([(job_id, run.run_dir, contract(spec).train_iters(spec))], quiet=as_json)[job_id]
    if as_json:
        print(json.dumps({"job_id": job_id, "run_dir": str(run.run_dir), "state": state.value}))
    return 0 if state is query.JobState.COMPLETED else 1


def submit_sweep(
    load,
    base: JobSpec,
    sweeps: list[str],
    run_dir: Path | None,
    template_dir: Path | None = None,
    wait: bool = False,
    as_json: bool = False,
) -> int:
    """One job array, a task per combination of the swept values (slurm/sweep.py)."""
    _require_sbatch()
    combos = sweep.tasks(load, sweeps)
    parent = Path(run_dir or layout.default_run_dir(base)).resolve()
    if parent.exists() and any(parent.iterdir()):
        raise UserError.one("--run-dir", f"{parent} is not empty", "a sweep needs a folder of its own")
    script, runs = sweep.prepare(base, combos, parent, template_dir)
    for run in runs:
        refuse_if_active(run.run_dir)
    parent.mkdir(parents=True, exist_ok=True)
    try:
        for run in runs:
            layout.create(run)
        array_id = _submit(parent, script, base)
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    sweep.record(parent, array_id, combos, runs)
    tasks = [
        (f"{array_id}_{i}", run.run_dir, contract(spec).train_iters(spec))
        for i, ((_, spec), run) in enumerate(zip(combos, runs))
    ]
    if as_json and not wait:
        print(
            json.dumps(
                {
                    "job_id": array_id,
                    "run_dir": str(parent),
                    "tasks": [
                        {"job_id": j, "run_dir": str(r), "values": v} for (j, r, _), (v, _) in zip(tasks, combos)
                    ],
                }
            )
        )
    elif not as_json:
        print(f"submitted job array {array_id} ({len(tasks)} tasks)\nsweep directory: {parent}", flush=True)
        for (job_id, run_dir_, _), (values, _) in zip(tasks, combos):
            print(f"  {job_id}  {' '.join(f'{k}={v}' for k, v in values.items())}  {run_dir_.name}", flush=True)
    if not wait:
        return 0
    states = follow(tasks, quiet=as_json)
    if as_json:
        print(
            json.dumps({"job_id": array_id, "run_dir": str(parent), "states": {j: s.value for j, s in states.items()}})
        )
    return 0 if all(s is query.JobState.COMPLETED for s in states.values()) else 1


def _submit(folder: Path, script: str, spec: JobSpec) -> str:
    """Submit `script` (submitit keeps its files under `folder`); the job id."""
    try:
        return query.submit(folder / "submitit", script)
    except query.Refused as exc:
        raise sbatch_error(str(exc), spec) from None
