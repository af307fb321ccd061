"""The preemption policy: after the training step ends, requeue or stop.

Runs in the batch shell (`hpc-mm finish`) once the step has ended. A job stopped by a
signal (time limit coming, preemption, scancel --signal) is requeued when:
  - it has restarts left (requeue.max_restarts, counted by SLURM_RESTART_COUNT),
  - it made progress: the committed checkpoint advanced during this restart
    (a job that cannot reach its next checkpoint would loop forever), and
  - training is not already finished.
A job that ended without a signal is not requeued: success is final, and a crash would
most likely crash again (its log says why).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc_mm import checkpoint, events
from hpc_mm.rundir import JOB_FILE
from hpc_mm.spec import checkpoint_dir, load_job


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str


def decide(run_dir: Path, signal_name: str | None, restart: int) -> Decision:
    spec = load_job(run_dir / JOB_FILE)
    if not signal_name:
        return Decision(False, "the step ended without a stop signal")
    latest = checkpoint.latest_iteration(checkpoint_dir(spec, run_dir)) or 0
    if latest >= spec.gpt.train_iters:
        return Decision(False, f"training finished (checkpoint at iteration {latest})")
    if restart >= spec.requeue.max_restarts:
        return Decision(False, f"restart limit reached ({restart} of requeue.max_restarts = {spec.requeue.max_restarts})")
    started_at = max((e.get("iteration", 0) for e in events.read(run_dir)
                      if e["event"] == "resumed" and e.get("restart") == restart), default=0)
    if latest <= started_at:
        return Decision(False, f"no progress this restart (checkpoint still at iteration {latest}); "
                               "raise requeue.grace_seconds if the save did not fit in it")
    return Decision(True, f"stopped by SIG{signal_name} at checkpoint {latest}")


def finish(run_dir: Path, returncode: int, signal_name: str | None) -> int:
    run_dir = Path(run_dir)
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    job_id = os.environ.get("SLURM_JOB_ID")
    decision = decide(run_dir, signal_name, restart)
    if decision.requeue and job_id:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            events.record(run_dir, "requeued", reason=decision.reason,
                          iteration=checkpoint.latest_iteration(checkpoint_dir(load_job(run_dir / JOB_FILE), run_dir)))
            print(f"hpc-mm: requeued job {job_id}: {decision.reason}", flush=True)
            return 0
        print(f"hpc-mm: scontrol requeue failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
    if signal_name:
        events.record(run_dir, "failed", reason=decision.reason, returncode=returncode)
        print(f"hpc-mm: not requeued: {decision.reason}", flush=True)
        return returncode or 1
    return returncode
