"""`hpc-mm cancel`: stop a run the way a user means it. The job's stop signal goes to the batch
shell first, the job saves a checkpoint at the end of its iteration, and `finish` records the run
as `cancelled` (not requeued) and ends the job; if the step has not ended once the grace has
passed, or with `--now`, or while the job still waits in the queue, it is cancelled at once (Slurm's
SIGTERM still reaches the entry, which saves if it can in Slurm's KillWait). A sweep (its folder or
its array's id) is cancelled task by task, all at the same time.

The request is written for the job it was made for: a later job in the same run directory (a
resubmission with --run-dir) is not cancelled by it.
"""

from __future__ import annotations

import time

from hpc_mm.environments.slurm import is_job_id
from hpc_mm.errors import UserError
from hpc_mm.names import Cause
from hpc_mm.run import checkpoints
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.format import last_checkpoint
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir
from hpc_mm.slurm import query
from hpc_mm.slurm.runs import find, job_of

POLL = 2.0


def _print(text: str) -> None:
    print(text, flush=True)


def cancel(target: str, now: bool = False, say=_print) -> int:
    """Stop the run's job (each task of a sweep): ask it to save first unless `now`; `say` tells how it went."""
    try:
        found = find(target)
    except UserError:
        if not is_job_id(target):
            raise
        found = None  # a job id no run directory claims: cancel the job itself
    if isinstance(found, SweepDir):
        active = [(run, j) for run in found.tasks() if (j := job_of(run)) and not query.job(j).ended]
        if not active:
            raise UserError.one(
                "JOB_ID", f"every task of the sweep {found.name} has already ended", "nothing to cancel"
            )
        return _cancel(active, now, say)
    job_id = target if found is None else job_of(found)
    if not job_id:
        raise UserError.one(
            "RUN_DIR",
            f"{found.path} has no Slurm job recorded (it never started under Slurm)",
            "a local run stops with Ctrl-C; pass a job id otherwise",
        )
    state = query.job(job_id)
    if not state.known:
        raise UserError.one("JOB_ID", f"Slurm knows no job {job_id}", "list your jobs with `squeue --me`")
    if state.ended:
        raise UserError.one("JOB_ID", f"job {job_id} has already ended ({state.state.value})", "nothing to cancel")
    return _cancel([(found, job_id)], now, say)


def _cancel(jobs: list[tuple[RunDir | None, str]], now: bool, say) -> int:
    """Signal every job that can save, wait for them together, cancel the rest at once."""
    asked, grace = [], 0
    for run, job_id in jobs:
        queued = query.job(job_id).state.queued
        if run is None or now or queued:
            _at_once(run, job_id, "while it waited in the queue" if queued else "at once (--now)", say)
            continue
        spec = run.job
        run.request_cancel(job_id)
        ok, err = query.signal_batch(job_id, spec.requeue.signal)
        if not ok:
            raise UserError.one("JOB_ID", f"cannot signal job {job_id}: {err}", "check `squeue --me`")
        say(
            f"job {job_id}: asked to save and stop (SIG{spec.requeue.signal}); waiting up to "
            f"{spec.requeue.grace_seconds} s"
        )
        asked.append((run, job_id))
        grace = max(grace, spec.requeue.grace_seconds)
    deadline = time.time() + grace + 30
    while asked and time.time() < deadline and not all(query.job(j).ended for _, j in asked):
        time.sleep(POLL)
    for run, job_id in asked:
        if not query.job(job_id).ended:
            _at_once(run, job_id, "after the grace passed without a checkpoint", say)
            continue
        say(f"cancelled job {job_id}; {last_checkpoint(_latest(run))}")
    return 0


def _latest(run: RunDir) -> int | None:
    return checkpoints.latest(run.job, run.checkpoint_dir())


def _at_once(run: RunDir | None, job_id: str, how: str, say) -> None:
    ok, err = query.cancel(job_id)
    if not ok:
        raise UserError.one("JOB_ID", f"scancel {job_id} failed: {err}", "check `squeue --me`")
    if run is None:
        say(f"cancelled job {job_id}")
        return
    started = [s for s in run.starts() if s.job_id == job_id]
    key = started[-1].key if started else StartKey(job_id, 0)
    if started and started[-1].began is not None and started[-1].end is None:
        # Its batch script's finish records how it ended (Slurm's SIGTERM lets it save first).
        deadline = time.time() + 60
        while time.time() < deadline and not query.job(job_id).ended:
            time.sleep(POLL)
        if run.reread().start(key).end is not None:
            say(f"cancelled job {job_id} ({how}); {last_checkpoint(_latest(run))}")
            return
    run.record(Kind.CANCELLED, key, reason=f"cancelled {how} (hpc-mm cancel)", cause=Cause.USER, iteration=_latest(run))
    say(f"cancelled job {job_id} ({how}); {last_checkpoint(_latest(run))}")
