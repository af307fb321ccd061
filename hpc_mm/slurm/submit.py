"""One path from a job to Slurm: prepare the run (in memory) -> render the script -> then
print it (`render`), check it with `sbatch --test-only` (`submit --dry-run`), or submit it.

A dry run writes nothing; `render` and `submit` write the run directory, and a submission
Slurm refuses takes it back. A submission and a dry run run the same sbatch command
(`query.sbatch_command`, as submitit builds it), the dry run with `--test-only`; following the job
is hpc-mm's own (`wait.py`, `query.jobs`). The
script never depends on submitit: it is the same text `hpc-mm render` writes for plain `sbatch`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.errors import UserError, warn
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import layout, lock, resume
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir, label
from hpc_mm.slurm import pipeline, query, sweep
from hpc_mm.slurm.grace import grace_problems
from hpc_mm.slurm.render import check_script, render_script

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


def _where(run: layout.RunFiles) -> None:
    """What any use of a run directory refuses, a dry run as much as a submission: a folder of someone
    else's work, one in use, and a `%`, which sbatch reads in a log's path as a pattern (%j, %x)."""
    if "%" in str(run.run_dir):
        raise UserError.one(
            "--run-dir", f"{run.run_dir} holds a %, which sbatch would read as a file-name pattern", "rename it"
        )
    layout.refuse_foreign(run.run_dir)
    refuse_if_active(run.run_dir)


def prepare(
    spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, new_code: bool = False
) -> layout.RunFiles:
    """Everything the run directory will hold, the script included; nothing is written."""
    run = layout.plan_run(spec, run_dir, new_code)
    _where(run)
    check_resume(spec, run.run_dir)
    script = render_script(spec, run.run_dir, template_dir)
    return dataclasses.replace(run, files={**run.files, layout.SCRIPT_FILE: script})


def check(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> None:
    """What `prepare` refuses, without rendering the script (for `validate`: what a stage waits
    for is known only when it is submitted)."""
    spec = dataclasses.replace(spec, after=[])
    run = layout.plan_run(spec, run_dir)
    _where(run)
    check_resume(spec, run.run_dir)
    check_script(spec, run.run_dir, template_dir)


def render(
    spec: JobSpec,
    run_dir: Path | None,
    template_dir: Path | None = None,
    output: Path | None = None,
    new_code: bool = False,
) -> int:
    """Write the run directory (the script runs `hpc-mm launch` on it) and print the script."""
    spec, _ = pipeline.resolve(spec)
    run = prepare(spec, run_dir, template_dir, new_code)
    if output and (output.is_dir() or not output.parent.is_dir()):
        raise UserError.one("--output", f"{output} is a folder, or its folder does not exist", "name a file to write")
    layout.create(run)
    script = run.files[layout.SCRIPT_FILE]
    print(f"run directory: {run.run_dir}", file=sys.stderr)
    if output:
        try:
            if output.exists() and not output.is_file():  # /dev/null, a pipe: written to, never replaced
                with open(output, "w") as f:
                    f.write(script)
            else:
                layout.write_private(output, script)  # as the run's own copy: it holds the job's environment
        except OSError as exc:
            raise UserError.one("--output", f"cannot write {output} ({exc.strerror})") from None
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(script)
    return 0


def ask_slurm(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> tuple[layout.RunFiles, str]:
    """The run as it would be submitted (nothing written), and `sbatch --test-only`'s word on its
    script where Slurm can be asked (a refusal is the user's error, as at submit)."""
    spec, _ = pipeline.resolve(spec)
    run = prepare(spec, run_dir, template_dir)
    script = run.files[layout.SCRIPT_FILE]
    return run, (
        test_only(script, spec) if query.available() else "Slurm not reachable from here: sbatch --test-only skipped"
    )


def dry_run(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, as_json: bool = False) -> int:
    for problem in grace_problems(spec, run_dir):
        warn(problem)
    run, check = ask_slurm(spec, run_dir, template_dir)
    script = run.files[layout.SCRIPT_FILE]
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


@dataclass(frozen=True)
class Submitted:
    """A job Slurm took: its id, its run directory (a sweep's: its folder), its tasks (a sweep)."""

    job_id: str
    run_dir: Path
    spec: JobSpec
    tasks: tuple[tuple[str, Path, dict], ...] = ()  # a sweep's: (job id, run directory, values)


def submit(
    spec: JobSpec,
    run_dir: Path | None,
    template_dir: Path | None = None,
    stages: dict[str, tuple[str, str]] | None = None,
    on_warning=warn,
    new_code: bool = False,
) -> Submitted:
    """Write the run directory and submit its script; a submission Slurm refuses takes it back.
    `stages`: earlier stages of the same pipeline by name, (job id, run directory)."""
    _require_sbatch()
    for problem in grace_problems(spec, run_dir):
        on_warning(problem)
    spec, after = pipeline.resolve(spec, stages)
    run = prepare(spec, run_dir, template_dir, new_code)
    created = layout.create(run)
    try:
        job_id = _submit(RunDir(run.run_dir).submitit_folder, run.files[layout.SCRIPT_FILE], spec)
    except BaseException:
        created.undo()
        raise
    rundir = RunDir(run.run_dir)
    rundir.record_job_id(
        job_id, submitted=time.time(), nodes=spec.nnodes, name=spec.name, **({"after": after} if after else {})
    )
    rundir.record(Kind.SUBMITTED, StartKey(job_id, 0), nodes=spec.nnodes, **({"after": list(after)} if after else {}))
    return Submitted(job_id, run.run_dir, spec)


def submit_sweep(
    load,
    base: JobSpec,
    sweeps: list[str],
    run_dir: Path | None,
    template_dir: Path | None = None,
    max_parallel: int | None = None,
    zipped: bool = False,
) -> Submitted:
    """One job array, a task per combination of the swept values (slurm/sweep.py)."""
    _require_sbatch()
    combos, parent, script, runs = _sweep(load, base, sweeps, run_dir, template_dir, max_parallel, zipped)
    parent.mkdir(parents=True, exist_ok=True)
    try:
        for run in runs:
            layout.create(run)
        array_id = _submit(SweepDir(parent).submitit_folder, script, base)
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    sweep.record(parent, array_id, combos, runs, max_parallel)
    tasks = tuple((f"{array_id}_{i}", run.run_dir, values) for i, ((values, _), run) in enumerate(zip(combos, runs)))
    return Submitted(array_id, parent, base, tasks)


def _sweep(load, base, sweeps, run_dir, template_dir, max_parallel, zipped):
    """Everything a sweep will write and submit, in memory: (combinations, folder, script, runs)."""
    combos = sweep.tasks(load, sweeps, zipped=zipped)
    parent = Path(run_dir or layout.default_run_dir(base)).resolve()
    if "%" in str(parent):
        raise UserError.one("--run-dir", f"{parent} holds a %, which sbatch would read as a file-name pattern")
    if parent.exists() and (not parent.is_dir() or any(parent.iterdir())):
        raise UserError.one("--run-dir", f"{parent} is not an empty folder", "a sweep needs a folder of its own")
    base, _ = pipeline.resolve(base)
    script, runs = sweep.prepare(base, combos, parent, template_dir, max_parallel)
    for run in runs:
        refuse_if_active(run.run_dir)
    return combos, parent, script, runs


def dry_run_sweep(
    load, base, sweeps, run_dir, template_dir=None, max_parallel=None, zipped=False, as_json=False
) -> int:
    """The sweep's script and tasks as they would be submitted, checked by `sbatch --test-only`."""
    combos, parent, script, runs = _sweep(load, base, sweeps, run_dir, template_dir, max_parallel, zipped)
    check = (
        test_only(script, base) if query.available() else "Slurm not reachable from here: sbatch --test-only skipped"
    )
    listed = [
        {"task": i, "values": values, "run_dir": str(r.run_dir)} for i, ((values, _), r) in enumerate(zip(combos, runs))
    ]
    if as_json:
        print(json.dumps({"run_dir": str(parent), "script": script, "tasks": listed, "test_only": check}))
        return 0
    print(script, end="")
    for t in listed:
        print(f"# task {t['task']}: {label(t['values'])}")
    print(f"# sweep directory (not created): {parent}\n# sbatch --test-only: {check}")
    return 0


def _submit(folder: Path, script: str, spec: JobSpec) -> str:
    """Submit `script` (submitit keeps its files in `folder`: the run's or the sweep's); the job id."""
    try:
        return query.submit(folder, script)
    except query.Refused as exc:
        raise sbatch_error(str(exc), spec) from None
