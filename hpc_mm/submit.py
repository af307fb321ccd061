"""Submit to Slurm: build (spec) -> render (script) -> submit (sbatch), dry-run minus the last step.

Submission goes through submitit's SlurmExecutor, with its script replaced by ours (the
private hook `_make_submission_file_text`; submitit is pinned for that reason), so the
job handle, sacct polling and state names are submitit's. The script itself never
depends on submitit: it is the same text `hpc-mm render` prints for plain `sbatch`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mm import events
from hpc_mm.errors import UserError
from hpc_mm.render import render_script
from hpc_mm.rundir import SCRIPT_FILE, SUBMISSION_FILE, prepare_run_dir
from hpc_mm.spec import JobSpec, default_run_dir

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
FINAL_OK = {"COMPLETED"}
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SUSPENDED",
              "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"}


def sbatch_error(stderr: str) -> UserError:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "sbatch failed"
    text = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", text)
    for pattern, field, hint in _SBATCH_ERRORS:
        if re.search(pattern, text, re.I):
            return UserError.one(field, f"Slurm refused the job: {text}", hint)
    return UserError.one("sbatch", text, "run `hpc-mm submit --dry-run` to see the script")


def slurm_reachable() -> bool:
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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


def _executor(folder: Path, script: str):
    import submitit

    class ScriptExecutor(submitit.SlurmExecutor):
        """submitit's executor, submitting hpc-mm's script instead of its pickle runner."""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return script

    return ScriptExecutor(folder=folder)


def submit(spec: JobSpec, run_dir: Path | None, template_dir: Path | None = None, dry_run: bool = False,
           wait: bool = False, as_json: bool = False) -> int:
    if dry_run:
        run_dir = Path(run_dir or default_run_dir(spec)).resolve()
        script = render_script(spec, run_dir, template_dir)
        check = test_only(script) if slurm_reachable() else "Slurm not reachable from here: sbatch --test-only skipped"
        if as_json:
            print(json.dumps({"run_dir": str(run_dir), "script": script, "test_only": check}))
        else:
            print(script, end="")
            print(f"# run directory (not created): {run_dir}\n# sbatch --test-only: {check}")
        return 0
    if shutil.which("sbatch") is None:
        raise UserError.one("sbatch", "is not on PATH: this machine cannot submit to Slurm",
                            "run on a login node, or use `hpc-mm render` and copy the script there")
    run_dir = prepare_run_dir(spec, run_dir)
    script = render_script(spec, run_dir, template_dir)
    (run_dir / SCRIPT_FILE).write_text(script)
    from submitit.core.utils import FailedJobError

    (run_dir / "submitit").mkdir(exist_ok=True)
    executor = _executor(run_dir / "submitit", script)
    try:
        job = executor._submit_command("hpc-mm launch")
    except FailedJobError as exc:  # submitit's wrapper around sbatch's refusal
        raise sbatch_error(str(exc)) from None
    (run_dir / SUBMISSION_FILE).write_text(json.dumps({"job_id": job.job_id, "submitted": time.time(),
                                                       "nodes": spec.slurm.nodes, "name": spec.name}))
    events.record(run_dir, "submitted", job_id=job.job_id, restart=0, nodes=spec.slurm.nodes)
    if as_json and not wait:
        print(json.dumps({"job_id": job.job_id, "run_dir": str(run_dir)}))
    elif not as_json:
        print(f"submitted job {job.job_id}\nrun directory: {run_dir}", flush=True)
    if not wait:
        return 0
    state = watch(job, quiet=as_json)
    if as_json:
        print(json.dumps({"job_id": job.job_id, "run_dir": str(run_dir), "state": state}))
    return 0 if state in FINAL_OK else 1


def watch(job, quiet: bool = False, poll: float = 3.0) -> str:
    """Follow a submitit job until it ends; print each state change; return the final state."""
    last = None
    while True:
        # "force": submitit's watcher otherwise refreshes at most once a minute.
        raw = job.watcher.get_state(job.job_id, mode="force")
        state = raw.split()[0].rstrip("+")  # "CANCELLED by 0" -> "CANCELLED"
        if state != last and not quiet:
            print(f"{time.strftime('%H:%M:%S')} job {job.job_id}: {state}", file=sys.stderr, flush=True)
        last = state
        if state not in UNFINISHED:
            return state
        time.sleep(poll)
