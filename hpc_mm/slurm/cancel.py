"""`hpc-mm cancel`: stop a run the way a user means it. The job's stop signal goes to the batch
shell first, the job saves a checkpoint at the end of its iteration, and `finish` records the run
as `cancelled` (not requeued) and ends the job; if the step has not ended once the grace has
passed, or with `--now`, or while the job still waits in the queue, it is cancelled at once.
A sweep (its folder or its array's id) is cancelled task by task, all at the same time."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import checkpoints, events, layout
from hpc_mm.slurm import query
from hpc_mm.slurm.status import find_run_dir, run_job_id

_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED")


def cancel(target: str, now: bool = False) -> int:
    sweep = layout.find_sweep(target)
    if sweep is not None:
        found = [(p, run_job_id(p)) for p in sorted(sweep.glob("task-*")) if layout.is_run_dir(p)]
        active = [(p, j) for p, j in found if j and query.job_state(j)["state"] not in query.ENDED]
        if not active:
            raise UserError.one("JOB_ID", f"every task of the sweep {sweep.name} has already ended", "nothing to cancel")
        return _cancel(active, now)
    run_dir = _run_dir_of(target)
    job_id = target if run_dir is None else run_job_id(run_dir)
    if not job_id:
        raise UserError.one("RUN_DIR", f"{run_dir} has no Slurm job recorded (it never started under Slurm)",
                            "a local run stops with Ctrl-C; pass a job id otherwise")
    state = query.job_state(str(job_id))["state"]
    if state == "UNKNOWN":
        raise UserError.one("JOB_ID", f"Slurm knows no job {job_id}", "list your jobs with `squeue --me`")
    if state in query.ENDED:
        raise UserError.one("JOB_ID", f"job {job_id} has already ended ({state})", "nothing to cancel")
    return _cancel([(run_dir, str(job_id))], now)


def _cancel(jobs: list[tuple[Path | None, str]], now: bool) -> int:
    """Signal every job that can save, wait for them together, cancel the rest at once."""
    asked, grace = [], 0
    for run_dir, job_id in jobs:
        state = query.job_state(job_id)["state"]
        if run_dir is None or now or state in _QUEUED:
            _at_once(run_dir, job_id, "while it waited in the queue" if state in _QUEUED else
                     "at once (--now), without a last checkpoint")
            continue
        spec = load_job(run_dir / layout.JOB_FILE)
        (run_dir / layout.CANCEL_FILE).write_text(json.dumps({"time": time.time()}))
        ok, err = query.signal_batch(job_id, spec.requeue.signal)
        if not ok:
            raise UserError.one("JOB_ID", f"cannot signal job {job_id}: {err}", "check `squeue --me`")
        print(f"job {job_id}: asked to save and stop (SIG{spec.requeue.signal}); waiting up to "
              f"{spec.requeue.grace_seconds} s", flush=True)
        asked.append((run_dir, job_id, spec))
        grace = max(grace, spec.requeue.grace_seconds)
    deadline = time.time() + grace + 30
    while asked and time.time() < deadline and any(query.job_state(j)["state"] not in query.ENDED
                                                    for _, j, _ in asked):
        time.sleep(2)
    for run_dir, job_id, spec in asked:
        if query.job_state(job_id)["state"] not in query.ENDED:
            _at_once(run_dir, job_id, "after the grace passed without a checkpoint")
            continue
        latest = checkpoints.latest_whole(layout.checkpoint_dir(spec, run_dir))
        print(f"cancelled job {job_id}; its last checkpoint is iteration {latest}")
    return 0


def _run_dir_of(target: str) -> Path | None:
    """The run directory of a path or a job id; None for a job id no run directory claims."""
    if target.replace("_", "").isdigit() and not Path(target).exists():
        try:
            return find_run_dir(target)
        except UserError:
            return None
    return find_run_dir(target)


def _at_once(run_dir: Path | None, job_id: str, how: str) -> None:
    ok, err = query.cancel(job_id)
    if not ok:
        raise UserError.one("JOB_ID", f"scancel {job_id} failed: {err}", "check `squeue --me`")
    if run_dir is not None:
        spec = load_job(run_dir / layout.JOB_FILE)
        events.record(run_dir, "cancelled", reason=f"cancelled {how} (hpc-mm cancel)", cause="user",
                      iteration=checkpoints.latest_whole(layout.checkpoint_dir(spec, run_dir)))
    print(f"cancelled job {job_id}")
