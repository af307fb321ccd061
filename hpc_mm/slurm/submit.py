"""One path from a job to Slurm: prepare the run (in memory) -> render the script -> then
print it (`render`), check it with `sbatch --test-only` (`submit --dry-run`), or submit it.

A dry run writes nothing; `render` and `submit` write the run directory, and a submission
Slurm refuses takes it back. Submission goes through submitit's SlurmExecutor with its script
replaced by ours (the private hook `_make_submission_file_text`; submitit is pinned for that
reason), so the job handle, sacct polling and state names are submitit's. The script never
depends on submitit: it is the same text `hpc-mm render` writes for plain `sbatch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import events, layout, lock
from hpc_mm.slurm import query, sweep
from hpc_mm.slurm.render import check_script, render_script
from hpc_mm.slurm.wait import wait as follow

# sbatch's refusals, mapped to the job-file field that causes them.
_SBATCH_ERRORS = [
    (r"invalid partition", "slurm.partition", "list partitions with `sinfo -s`"),
    (r"invalid account|account.*(not|invalid)", "slurm.account", "list yours with `sacctmgr show assoc user=$USER`"),
    (r"invalid qos", "slurm.qos", "list them with `sacctmgr show qos`"),
    (r"gres|generic resource", "slurm.gres", "check `sinfo -o '%N %G'` for the node's gres"),
    (r"time limit", "slurm.time", "the partition's MaxTime is in `sinfo -s`"),
    (r"node count|node configuration|nodes? .*not available|more processors", "slurm.nodes",
     "ask for fewer nodes/cpus/memory or another partition (`sinfo -N -l`)"),
    (r"memory", "slurm.mem", "ask for less memory"),
]


def sbatch_error(stderr: str) -> UserError:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "sbatch failed"
    text = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", text)
    for pattern, field, hint in _SBATCH_ERRORS:
        if re.search(pattern, text, re.I):
            return UserError.one(field, f"Slurm refused the job: {text}", hint)
    return UserError.one("sbatch", text, "run `hpc-mm submit --dry-run` to see the script")


def test_only(script: str) -> str:
    """`sbatch --test-only`: Slurm checks partition, account, gres and size without queueing."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
        f.write(script)
    try:
        result = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    finally:
        Path(f.name).unlink()
    if result.returncode != 0:
        raise sbatch_error(result.stderr)
    return (result.stderr or result.stdout).strip()


def refuse_if_active(run_dir: Path) -> None:
    """A run directory whose run is still running or queued is not written over."""
    held = lock.holder(run_dir)
    if held is not None:
        raise UserError.one("--run-dir", f"{run_dir} is in use by a running run ({lock.describe(held)})",
                            "wait for it to end, stop it (hpc-mm cancel), or use another --run-dir")
    job_id = layout.read_run_file(run_dir).get("job_id") if layout.is_run_dir(run_dir) else None
    if job_id and query.job_state(str(job_id))["state"] in query.UNFINISHED - {"UNKNOWN"}:
        raise UserError.one("--run-dir", f"{run_dir} belongs to job {job_id}, which is still "
                            f"{query.job_state(str(job_id))['state'].lower()}",
                            f"wait for it, cancel it (hpc-mm cancel {job_id}), or use another --run-dir")


def prepare(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> layout.RunFiles:
    """Everything the run directory will hold, the script included; nothing is written."""
    run = layout.plan_run(spec, run_dir)
    refuse_if_active(run.run_dir)
    script = render_script(spec, run.run_dir, template_dir)
    return dataclasses.replace(run, files={**run.files, layout.SCRIPT_FILE: script})


def check(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None) -> None:
    """What `prepare` refuses, without rendering the script (for `validate`)."""
    run = layout.plan_run(spec, run_dir)
    refuse_if_active(run.run_dir)
    check_script(spec, run.run_dir, template_dir)


def render(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None,
           output: Path | None = None) -> int:
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


def _executor(folder: Path, script: str):
    import submitit

    class ScriptExecutor(submitit.SlurmExecutor):
        """submitit's executor, submitting hpc-mm's script instead of its pickle runner."""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return script

    return ScriptExecutor(folder=folder)


def dry_run(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, as_json: bool = False) -> int:
    run = prepare(spec, run_dir, template_dir)
    script = run.files[layout.SCRIPT_FILE]
    check = test_only(script) if query.available() else "Slurm not reachable from here: sbatch --test-only skipped"
    if as_json:
        print(json.dumps({"run_dir": str(run.run_dir), "script": script, "test_only": check}))
    else:
        print(script, end="")
        print(f"# run directory (not created): {run.run_dir}\n# sbatch --test-only: {check}")
    return 0


def _require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError.one("sbatch", "is not on PATH: this machine cannot submit to Slurm",
                            "run on a login node, or use `hpc-mm render` and copy the script there")


def submit(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, wait: bool = False,
           as_json: bool = False) -> int:
    _require_sbatch()
    run = prepare(spec, run_dir, template_dir)
    created = layout.create(run)
    try:
        job_id = _submit(run.run_dir, run.files[layout.SCRIPT_FILE])
    except BaseException:
        created.undo()
        raise
    layout.record_job_id(run.run_dir, job_id, submitted=time.time(), nodes=spec.nnodes, name=spec.name)
    events.record(run.run_dir, "submitted", job_id=job_id, restart=0, nodes=spec.nnodes)
    if as_json and not wait:
        print(json.dumps({"job_id": job_id, "run_dir": str(run.run_dir)}))
    elif not as_json:
        print(f"submitted job {job_id}\nrun directory: {run.run_dir}", flush=True)
    if not wait:
        return 0
    state = follow([(job_id, run.run_dir, spec.gpt.train_iters)], quiet=as_json)[job_id]
    if as_json:
        print(json.dumps({"job_id": job_id, "run_dir": str(run.run_dir), "state": state}))
    return 0 if state in query.FINAL_OK else 1


def submit_sweep(load, base: JobSpec, sweeps: list[str], run_dir: Path | None, template_dir: Path | None = None,
                 wait: bool = False, as_json: bool = False) -> int:
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
        array_id = _submit(parent, script)
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    sweep.record(parent, array_id, combos, runs)
    tasks = [(f"{array_id}_{i}", run.run_dir, spec.gpt.train_iters) for i, ((_, spec), run) in enumerate(zip(combos, runs))]
    if as_json and not wait:
        print(json.dumps({"job_id": array_id, "run_dir": str(parent), "tasks": [
            {"job_id": j, "run_dir": str(r), "values": v} for (j, r, _), (v, _) in zip(tasks, combos)]}))
    elif not as_json:
        print(f"submitted job array {array_id} ({len(tasks)} tasks)\nsweep directory: {parent}", flush=True)
        for (job_id, run_dir_, _), (values, _) in zip(tasks, combos):
            print(f"  {job_id}  {' '.join(f'{k}={v}' for k, v in values.items())}  {run_dir_.name}", flush=True)
    if not wait:
        return 0
    states = follow(tasks, quiet=as_json)
    if as_json:
        print(json.dumps({"job_id": array_id, "run_dir": str(parent), "states": states}))
    return 0 if all(s in query.FINAL_OK for s in states.values()) else 1


def _submit(folder: Path, script: str) -> str:
    """Submit `script` through submitit (its folder under `folder`); the job id."""
    from submitit.core.utils import FailedJobError

    (folder / "submitit").mkdir(exist_ok=True)
    with tempfile.TemporaryFile("w+") as stderr:
        try:
            with _stderr_to(stderr):  # sbatch's own complaints: we turn them into one line
                return _executor(folder / "submitit", script)._submit_command("hpc-mm launch").job_id
        except FailedJobError as exc:  # submitit's wrapper around sbatch's refusal
            raise sbatch_error(str(exc)) from None


@contextlib.contextmanager
def _stderr_to(file):
    """Point file descriptor 2 (inherited by sbatch) at `file` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
