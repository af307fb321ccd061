"""Stragglers on the real test cluster, under both launchers: a slowed rank is named within 50 of its
measured steps, in an event with its node; a healthy run on a machine under load (a busy process on one of the two
cores) names nobody in 200 steps.

Slowing a rank on this machine is slowing its compute, not its waits: its emulated node shares two
cores with the other's, a step is ~35 ms of which ~10 ms are the rank's forward and backward passes,
and a stop that falls while it waits for data or for the other rank costs the job nothing (stopped 3 ms
of every 9, a rank's compute was 1.0-1.5x the other's, its job's steps 8-14% longer). So under
torchrun the rank is stopped half its time (6 ms of every 12: its compute 1.6-2.2x), and under srun
held to a quarter of a CPU by a cgroup CPU quota (2.1-2.5x), which the kernel counts as waiting for a
CPU: the trainer counts it as the rank's own time (train/cpuwait.py). Both are named at a threshold of
50%: this machine's two virtual CPUs alone (with no wait for a CPU in the steps) set one healthy rank's
compute 25-32% above the other's for tens of steps, in 3 of 17 runs under load (the default 30% is for
nodes of their own: tests/unit/test_straggler_rule.py holds it to a 30% slowdown in noisy step times).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpc_mm.run.rundir import read_events

from test_faults import finished, metrics_rows, processes, submit, until

# One CPU thread a rank, as torchrun gives several ranks of a node: each emulated node is a share of
# two cores, and a rank's own threads waiting for a CPU would be counted as its compute.
JOB = ("slurm.partition=low", "requeue.inside=false", "fault.hang_floor_step=60", "env.OMP_NUM_THREADS='1'",
       "fault.straggler_threshold=0.5")  # fmt: skip


def slow_down(pid: int, halt: threading.Event) -> None:
    """Stop the rank 6 ms of every 12 (half its time, a stop in every step's compute)."""
    while not halt.is_set():
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.006)
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        time.sleep(0.006)


CPU_V1 = Path("/sys/fs/cgroup/cpu")


def quota(pid: int, halt: threading.Event) -> None:
    """Hold the rank (all its threads) to a quarter of a CPU: a CFS quota of 2.5 ms every 10 ms (cgroup v1)."""
    group = CPU_V1 / f"hpc-mm-straggler-{pid}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text("2500")
        (group / "cgroup.procs").write_text(str(pid))
        halt.wait()
    finally:
        try:
            (CPU_V1 / "cgroup.procs").write_text(str(pid))
        except OSError:  # (the rank is gone)
            pass
        for _ in range(50):  # the cgroup empties once the rank has left it
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


SLOWER = {"torchrun": slow_down, "srun": quota}


def measured_steps(run_dir, first: int, last: int) -> int:
    """The steps first..last in which every rank's compute time was measured (the metrics rows carry
    them every 10 steps)."""
    count = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for i, step in enumerate(row.get("rank_seconds") or ()):
            iteration = row["iteration"] - len(row["rank_seconds"]) + 1 + i
            count += first <= iteration <= last and all(t is not None for t in step)
    return count


def named(run_dir):
    return [e for e in read_events(run_dir) if e["event"] == "straggler"]


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_a_slowed_rank_is_named_and_a_healthy_run_under_load_names_nobody(slurm_cluster, tmp_path, launcher):
    healthy, run_dir = tmp_path / "healthy", tmp_path / "slowed"
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # half the machine's CPUs, busy
    try:
        healthy_job = submit(healthy, *JOB, f"entry.launcher={launcher}", "gpt.train_iters=200")
        assert finished(healthy_job) == "COMPLETED"
    finally:
        load.kill()
    rows = [json.loads(line) for line in (healthy / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "rank_seconds" in r]  # every 10th row: the 10 steps' times, rank by rank
    assert len(rows) == 200 and len(timed) == 20 and all(len(t) == 2 for r in timed for t in r["rank_seconds"])
    if named(healthy):  # all of it, for the failure's report (an assertion's message is cut short)
        print(json.dumps({"named": named(healthy), "steps": [(r["iteration"], r["rank_seconds"]) for r in timed]}))
    assert named(healthy) == []

    job_id = submit(run_dir, *JOB, f"entry.launcher={launcher}", "gpt.train_iters=100000")
    until(lambda: metrics_rows(run_dir) >= 30)
    started = next(e for e in read_events(run_dir) if e["event"] == "started")
    host = started["hosts"][1]
    rank = until(lambda: processes(host, training_only=True, job_id=job_id))[0]
    halt = threading.Event()
    slower = threading.Thread(target=SLOWER[launcher], args=(rank, halt), daemon=True)
    since = metrics_rows(run_dir)  # (rows are iterations, one a row)
    slower.start()
    try:
        found = until(lambda: named(run_dir), timeout=180)
    finally:
        halt.set()
        slower.join()
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hpc_mm", "status", str(run_dir), "--json"], capture_output=True, text=True
        ).stdout
    )
    subprocess.run([sys.executable, "-m", "hpc_mm", "cancel", job_id, "--now"], capture_output=True)
    first_iteration = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[since - 1])["iteration"]
    assert len(found) == 1 and found[0]["rank"] == 1 and found[0]["nodes"] == [host], found
    # within 50 steps in which the ranks could be measured (a step in which a rank waited for a CPU over
    # 60% of its compute says nothing of it: CI's other worker once took the CPUs for 40 steps)
    judged = measured_steps(run_dir, first_iteration, found[0]["iteration"])
    assert judged <= 50 and found[0]["ratio"] > 1.5, (first_iteration, judged, found)
    assert status["stragglers"] == [{"rank": 1, "node": host, "ratio": found[0]["ratio"]}], status
    finished(job_id)
