"""Record what the real test cluster's Slurm answers, for the unit tests' recorded Slurm.

Run it (as root, with `scripts/slurm-testbed up`) when query.py changes the commands it gives:

    .venv/bin/python tests/recorded/record.py        # writes tests/recorded/slurm.json (a few minutes)

It puts jobs into the states a run can be in (pending for several reasons, running, completed,
failed, cancelled, timed out, preempted and requeued, a job array's task) and, at each moment,
asks through hpc-mm's own query functions with `_run` wrapped, so the recording holds exactly the
command lines hpc-mm gives and Slurm's exact answers. Orders (requeue, update, scancel) are recorded
on throwaway jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hpc_mm.slurm import query  # noqa: E402

OUT = Path(__file__).with_name("slurm.json")
_real_run = query._run
_log: list[tuple[list[str], object]] = []


def _recording_run(cmd, timeout=30):
    answer = _real_run(cmd, timeout)
    _log.append((list(cmd), answer))
    return answer


def sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", *args], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def state(job_id: str) -> str:
    return query.job(job_id).state.value


def until(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {predicate}")


def capture(job_id: str, folder: str | None = None) -> dict:
    """Every question hpc-mm asks about one job, with Slurm's answers."""
    _log.clear()
    query.job(job_id)
    query.show_job(job_id)
    query.jobs([job_id])
    if folder:
        query.queued_jobs_writing_to(folder)
    return {
        "job_id": job_id,
        "at": dt.datetime.now().isoformat(timespec="seconds"),
        "answers": [[cmd, None if a is None else [a.returncode, a.stdout, a.stderr]] for cmd, a in _log],
    }


MOMENTS = Path("/tmp/hpc-mm-record/moments")
# A batch script that, on its stop signal, keeps what `scontrol show job` says at that moment (what
# `hpc-mm finish` asks to tell a preemption from a time limit from a signal by hand), then requeues.
TRAP = (
    "trap 'scontrol show job -o $SLURM_JOB_ID > {d}/$SLURM_JOB_ID.out 2> {d}/$SLURM_JOB_ID.err; "
    "echo $? > {d}/$SLURM_JOB_ID.rc; scontrol requeue $SLURM_JOB_ID; exit 0' USR1; sleep 600 & wait"
)


def moment(job_id: str) -> dict:
    """The answer the job's own trap kept, as a capture of `scontrol show job` at that moment."""
    until(lambda: (MOMENTS / f"{job_id}.rc").is_file(), timeout=240)
    time.sleep(0.5)
    answer = [
        int((MOMENTS / f"{job_id}.rc").read_text()),
        (MOMENTS / f"{job_id}.out").read_text(),
        (MOMENTS / f"{job_id}.err").read_text(),
    ]
    at = dt.datetime.fromtimestamp((MOMENTS / f"{job_id}.rc").stat().st_mtime).isoformat(timespec="seconds")
    return {"job_id": job_id, "at": at, "answers": [[["scontrol", "show", "job", "-o", job_id], answer]]}


def order(cmd: list[str]) -> list:
    answer = _real_run(cmd)
    return [cmd, None if answer is None else [answer.returncode, answer.stdout, answer.stderr]]


def main() -> None:
    query._run = _recording_run
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    until(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip())
    jobs: dict[str, dict] = {}

    # A job holding every node, so that others wait for resources; one waiting for a begin time.
    holder = sbatch("-N", "4", "--exclusive", "-p", "low", "--wrap", "sleep 600")
    until(lambda: state(holder) == "RUNNING")
    jobs["running"] = capture(holder)
    waiting = sbatch("-N", "2", "-p", "low", "-o", "/tmp/hpc-mm-record/logs/w-%j.out", "--wrap", "true")
    jobs["pending-resources"] = capture(waiting, "/tmp/hpc-mm-record/logs")
    later = sbatch("-N", "1", "--begin=now+1hour", "--wrap", "true")
    until(lambda: query.show_job(later).reason == "BeginTime", timeout=120)
    jobs["pending-begintime"] = capture(later)
    held = sbatch("-N", "1", "--hold", "--wrap", "true")
    jobs["pending-held"] = capture(held)
    array = sbatch("-N", "1", "--array=0-1", "--begin=now+1hour", "--wrap", "true")
    jobs["array-task-pending"] = capture(f"{array}_1")
    for job in (waiting, later, held, array):
        subprocess.run(["scancel", job], capture_output=True)
    jobs["cancelled-while-pending"] = capture(later)

    # Preemption: a low job on two nodes, a high job that needs them; the low one is requeued.
    subprocess.run(["scancel", holder], capture_output=True)
    until(lambda: query.job(holder).ended)
    jobs["cancelled"] = capture(holder)
    MOMENTS.mkdir(parents=True, exist_ok=True)
    for old in MOMENTS.iterdir():
        old.unlink()
    low = sbatch(
        "-N",
        "2",
        "-p",
        "low",
        "-t",
        "60",
        "--exclusive",
        "--requeue",
        "--signal=B:USR1@60",
        "--wrap",
        TRAP.format(d=MOMENTS),
    )
    until(lambda: state(low) == "RUNNING")
    jobs["running-low"] = capture(low)
    high = sbatch("-N", "4", "-p", "high", "--exclusive", "--wrap", "sleep 20")
    jobs["being-preempted"] = moment(low)
    until(lambda: query.show_job(low).restarts == 1, timeout=120)
    jobs["preempted-requeued"] = capture(low)
    until(lambda: state(high) == "RUNNING")
    jobs["preempting"] = capture(high)
    until(lambda: query.job(high).ended, timeout=120)
    jobs["completed"] = capture(high)
    orders = {"release-hold": order(["scontrol", "update", f"JobId={low}", "StartTime=now"])}
    until(lambda: state(low) == "RUNNING", timeout=180)
    jobs["running-after-requeue"] = capture(low)
    for old in MOMENTS.iterdir():
        old.unlink()
    orders["signal-batch"] = order(["scancel", "--batch", "--signal=USR1", low])
    jobs["signalled-by-hand"] = moment(low)
    until(lambda: query.show_job(low).state.queued, timeout=60)
    orders["exclude-nodes"] = order(["scontrol", "update", f"JobId={low}", "ExcNodeList=n2"])
    orders["cancel"] = order(["scancel", low])
    until(lambda: query.job(low).ended)
    orders["requeue-ended"] = order(["scontrol", "requeue", low])

    failed = sbatch("-N", "1", "--wrap", "exit 3")
    until(lambda: query.job(failed).ended)
    jobs["failed"] = capture(failed)
    timeout = sbatch("-N", "1", "-t", "1", "--wrap", "sleep 300")
    at_limit = sbatch(
        "-N",
        "1",
        "-t",
        "2",
        "--signal=B:USR1@90",
        "--no-requeue",
        "--wrap",
        TRAP.format(d=MOMENTS).replace("scontrol requeue $SLURM_JOB_ID; ", ""),
    )
    until(lambda: query.job(timeout).ended, timeout=240)
    jobs["timeout"] = capture(timeout)
    jobs["at-time-limit"] = moment(at_limit)
    jobs["unknown"] = capture("999999")
    orders["requeue"] = order(["scontrol", "requeue", "999999"])
    orders["cancel-unknown"] = order(["scancel", "999999"])

    script = Path("/tmp/hpc-mm-record/test.sbatch")
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\ntrue\n")
    orders["test-only"] = order(["sbatch", "--test-only", str(script)])
    script.write_text("#!/bin/bash\n#SBATCH --gpus-per-node=1\ntrue\n")  # the test cluster has no GPUs
    orders["test-only-gres"] = order(["sbatch", "--test-only", str(script)])

    _log.clear()
    query.available()
    query.node_states(["n1", "n2"])
    query.partition_nodes("low")
    cluster = [[cmd, [a.returncode, a.stdout, a.stderr]] for cmd, a in _log if a is not None]
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    OUT.write_text(
        json.dumps(
            {
                "slurm": version,
                "recorded": dt.date.today().isoformat(),
                "jobs": jobs,
                "orders": orders,
                "cluster": cluster,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT}: {', '.join(jobs)}")


if __name__ == "__main__":
    main()
