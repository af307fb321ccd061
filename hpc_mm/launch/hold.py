"""After a requeue: Slurm holds the job back about two minutes; `hpc-mm release-hold` lifts the
hold once the job is pending again, so that it starts as soon as it has nodes. A requeue Slurm did
on its own (finish never ran) is recorded by the next start (`note_requeue_by_slurm`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hpc_mm.job.spec import JobSpec
from hpc_mm.names import Cause
from hpc_mm.run import checkpoints, notify
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query
from hpc_mm.slurm.jobs import SETTLE_SECONDS


def spawn_release(key: StartKey, run: RunDir) -> None:
    """Slurm holds a requeued job back for about two minutes (it sets the job's begin time when its
    batch script has ended: AuthInfo's cred_expire, 120 s by default), so the hold can only be lifted
    after this script is gone: by a small process of its own session that waits for the job to be
    pending again and then sets its start time to now (`hpc-mm release-hold`). Where Slurm ends every
    process of the job (proctrack/cgroup), it ends too, and the job waits the hold out."""
    import subprocess

    out = os.environ.get("SLURM_JOB_ID") and run.batch_log(run.job.name, os.environ["SLURM_JOB_ID"])
    with open(out or os.devnull, "a") as log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc_mm",
                "release-hold",
                str(key.job_id),
                str(run.path),
                "--restart",
                str(key.restart + 1),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


HOLD_WAIT = 300.0  # how long release-hold waits for the job to be pending again
# Why Slurm holds a requeued job back at all: each node revokes the job's credential when the requeue
# ends its old instance, to the second, and refuses a new one of the same second ("Killing
# non-startable batch JobId=N: Job credential revoked": the job fails). Seen on the test cluster when
# the hold was lifted within the second. A few seconds are enough (SETTLE_SECONDS); Slurm's own hold
# is two minutes.


def release_hold(job_id: str, run_dir: Path, restart: int, clock=time.monotonic, sleep=time.sleep) -> int:
    """`hpc-mm release-hold`: once the requeued job waits for its begin time, set it to now."""
    deadline = clock() + HOLD_WAIT
    while clock() < deadline:
        job = query.show_job(job_id)
        if job.known and not job.state.queued and job.state.value != "COMPLETING":
            return 0  # it started already (or ended): nothing to release
        if job.state.queued and job.reason == "BeginTime":
            sleep(SETTLE_SECONDS)
            released, err = query.release_hold(job_id)
            if released:
                RunDir(run_dir).record(Kind.RELEASED, StartKey(job_id, restart))
                print(
                    f"hpc-mm: released Slurm's hold on requeued job {job_id}: it starts as soon as it has nodes",
                    flush=True,
                )
                return 0
            print(f"hpc-mm: job {job_id} waits Slurm's hold after a requeue (about 2 minutes): {err}", flush=True)
            return 1
        sleep(1.0)
    return 1


def note_requeue_by_slurm(spec: JobSpec, run: RunDir, key: StartKey) -> None:
    """On a restart, record the requeue if Slurm did it without us (so the record has every restart)."""
    if key.restart < 1:
        return
    previous = run.start(StartKey(key.job_id, key.restart - 1))
    if not previous.events or previous.end is not None:
        return
    requeued = run.record(
        Kind.REQUEUED,
        previous.key,
        cause=Cause.BY_SLURM,
        reason="requeued by Slurm (preemption with PreemptMode=REQUEUE, a failed batch host, or an "
        "administrator); the previous start ended without a word from hpc-mm",
        iteration=checkpoints.latest(spec, run.checkpoint_dir(spec)),
    )
    notify.deliver(run, [requeued], spec)  # finish never ran for that start: tell of it now
