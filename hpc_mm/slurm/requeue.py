"""The preemption policy: after the training step ends, requeue or stop.

Runs in the batch shell (`hpc-mm finish`) once the step has ended, and first tells apart
why the job was stopped:
  - preemption (Slurm set the job's PreemptTime, whatever the signal: sites without
    preempt_send_user_signal send only SIGTERM): not the job's fault, so it is requeued
    whenever training is unfinished, and it does not count against requeue.max_restarts;
  - time limit (the signal came within the grace window before EndTime) or a manual
    signal: requeued only with restarts left (counted from earlier such requeues) and when
    the committed checkpoint advanced during this restart, since a job that cannot reach
    its next checkpoint inside its time would loop forever;
  - Slurm may requeue a preempted job itself (PreemptMode=REQUEUE) and end the batch shell
    before this runs; the next start then records that requeue (`note_requeue_by_slurm`).
  - no signal: never requeued. Success is final, and a crash would most likely crash
    again (its log says why).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.job.jobfile import load_job
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import checkpoints, events
from hpc_mm.run.layout import JOB_FILE, checkpoint_dir
from hpc_mm.slurm import query

PREEMPTION, TIME_LIMIT, SIGNAL, BY_SLURM = "preemption", "time-limit", "signal", "slurm"
# Requeues that are not the job's doing: they never use up requeue.max_restarts.
NOT_COUNTED = (PREEMPTION, BY_SLURM)


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str


def classify(job_fields: dict, grace_seconds: int, now: dt.datetime | None = None) -> str:
    """Why a signalled job stopped, from the job's fields as Slurm shows them."""
    if job_fields.get("PreemptTime") not in (None, "", "None", "Unknown"):
        return PREEMPTION
    end = job_fields.get("EndTime")
    try:
        left = (dt.datetime.fromisoformat(end) - (now or dt.datetime.now())).total_seconds()
    except (TypeError, ValueError):
        return SIGNAL
    return TIME_LIMIT if left <= grace_seconds + 60 else SIGNAL


def decide(spec: JobSpec, run_dir: Path, signal_name: str | None, restart: int, cause: str) -> Decision:
    if not signal_name:
        return Decision(False, "the step ended without a stop signal")
    if not spec.requeue.enabled:
        return Decision(False, f"stopped by SIG{signal_name}; requeue.enabled is false")
    # A preemption is one whatever the signal: sites without preempt_send_user_signal send
    # only SIGTERM. Otherwise SIGTERM is scancel's, or the hard limit's after the grace.
    if cause != PREEMPTION and signal_name != spec.requeue.signal:
        return Decision(False, f"stopped by SIG{signal_name} (scancel or the hard time limit), not by "
                               f"requeue.signal {spec.requeue.signal}")
    latest = checkpoints.latest_whole(checkpoint_dir(spec, run_dir)) or 0
    if latest >= spec.gpt.train_iters:
        return Decision(False, f"training finished (checkpoint at iteration {latest})")
    if cause == PREEMPTION:
        return Decision(True, f"preempted; resuming from checkpoint {latest}")
    record = events.read(run_dir)
    counted = sum(1 for e in record if e["event"] == "requeued" and e.get("cause") not in NOT_COUNTED)
    if counted >= spec.requeue.max_restarts:
        return Decision(False, f"restart limit reached ({counted} of requeue.max_restarts = {spec.requeue.max_restarts})")
    # The committed checkpoint when this restart began (recorded by launch).
    started_at = next((e.get("checkpoint") or 0 for e in record if e["event"] == "started" and e.get("restart") == restart),
                      0)
    if latest <= started_at:
        return Decision(False, f"no progress this restart (checkpoint still at iteration {latest}); "
                               "raise requeue.grace_seconds if the save did not fit in it")
    return Decision(True, f"stopped by {cause} (SIG{signal_name}) at checkpoint {latest}")


def finish(run_dir: Path, returncode: int, signal_name: str | None, failed: str | None = None) -> int:
    run_dir = Path(run_dir)
    if failed:  # the batch shell ended before the step (a setup line, an exit): nothing to requeue
        events.record(run_dir, "failed", reason=failed, cause="batch-script", returncode=returncode)
        return returncode or 1
    spec = load_job(run_dir / JOB_FILE)
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    job_id = os.environ.get("SLURM_JOB_ID")
    cause = classify(query.show_job(job_id), spec.requeue.grace_seconds) if job_id and signal_name else SIGNAL
    decision = decide(spec, run_dir, signal_name, restart, cause)
    if decision.requeue and job_id:
        ok, err = query.requeue(job_id)
        if ok:
            events.record(run_dir, "requeued", reason=decision.reason, cause=cause,
                          iteration=checkpoints.latest_iteration(checkpoint_dir(spec, run_dir)))
            print(f"hpc-mm: requeued job {job_id}: {decision.reason}", flush=True)
            return 0
        print(f"hpc-mm: requeue of job {job_id} failed: {err}", file=sys.stderr, flush=True)
    if signal_name:
        events.record(run_dir, "failed", reason=decision.reason, cause=cause, returncode=returncode)
        print(f"hpc-mm: not requeued: {decision.reason}", flush=True)
        return returncode or 1
    return returncode


def note_requeue_by_slurm(spec: JobSpec, run_dir: Path, restart: int) -> None:
    """On a restart, record the requeue if Slurm did it without us (so the record has every restart)."""
    if restart < 1:
        return
    previous = [e for e in events.read(run_dir) if e.get("restart") == restart - 1]
    if any(e["event"] == "requeued" for e in previous):
        return
    events.record(run_dir, "requeued", restart=restart - 1, cause=BY_SLURM,
                  reason="requeued by Slurm (preemption with PreemptMode=REQUEUE, or an administrator)",
                  iteration=checkpoints.latest_iteration(checkpoint_dir(spec, run_dir)))
