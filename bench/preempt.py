"""Real preemptions on the test cluster, for the restart-cost and goodput benchmarks.

A job runs in partition `low`, exclusive; preempting it is submitting an exclusive job to
`high` on its nodes (Slurm then signals ours, which saves, requeues and waits). Slurm holds a
requeued job back for a while (BeginTime); like an idle cluster would, we let it start as soon
as the preempting job has ended (`scontrol update StartTime=now`). That wait is queue time: it is
reported, and left out of the restart cost and of goodput.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import submit_tiny  # noqa: E402

from hpc_mm.run.rundir import RunDir, read_events  # noqa: E402

PY = sys.executable
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def submit(run_dir: Path, overrides: list[str]) -> str:
    base = [
        "slurm.exclusive=true",
        "slurm.partition=low",
        "slurm.time=60",
        "requeue.max_restarts=100",
        "checkpoint.save_interval=100000",
    ]
    return submit_tiny(run_dir, [*base, *overrides])


def state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    if out:
        return out
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    return out[0] if out else "UNKNOWN"


def let_start(job_id: str) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


def started(run_dir: Path, restart: int) -> dict | None:
    return next((e for e in read_events(run_dir) if e["event"] == "started" and e["restart"] == restart), None)


def first_row_after(run_dir: Path, when: float) -> dict | None:
    rows = RunDir(run_dir).metrics()
    return next(({"time": r.time, "iteration": r.iteration} for r in rows if (r.time or 0) >= when), None)


def preempt(run_dir: Path, job_id: str, restart: int, hold_seconds: float = 2.0) -> None:
    """Preempt start `restart` of the job; return once the next start has trained an iteration."""
    nodes = started(run_dir, restart)["hosts"]
    high = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "high",
            "--exclusive",
            "-N",
            str(len(nodes)),
            "-w",
            ",".join(nodes),
            "-o",
            "/dev/null",
            "--wrap",
            f"sleep {hold_seconds}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deadline = time.time() + 300
    while time.time() < deadline and state(high) not in ENDED:
        time.sleep(0.2)
    while time.time() < deadline and started(run_dir, restart + 1) is None:
        if state(job_id) == "PENDING":
            let_start(job_id)
        time.sleep(0.2)


def wait_until(predicate, timeout: float = 900, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(predicate)


def finish(job_id: str, timeout: float = 1800) -> str:
    wait_until(lambda: state(job_id) in ENDED or (state(job_id) == "PENDING" and let_start(job_id)), timeout, 1)
    return state(job_id)
