"""`submit --wait`: follow a job (or a sweep's tasks) until it ends, with one line of progress,
then print the run's summary. Exit status 0 only if every task completed. Ctrl-C stops following,
not the job: it says so, and how to find the job again."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.entries import contract
from hpc_mm.run.follow import Follower
from hpc_mm.run.report import summary, summary_text
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query
from hpc_mm.slurm.jobs import SETTLE_SECONDS
from hpc_mm.slurm.query import JobState

POLL = 3.0


def wait(jobs: list[tuple[str, Path]], quiet: bool = False, timeout: float | None = None) -> dict[str, JobState]:
    """Follow (job id, run directory) until every job has ended; {job id: final state}.
    `timeout`: give up following after so many seconds (TimeoutError; the jobs go on)."""
    try:
        return _wait([followed(j, r) for j, r in jobs], quiet, None if timeout is None else time.monotonic() + timeout)
    except KeyboardInterrupt:
        ids = [job_id for job_id, _ in jobs]
        print(
            f"\nhpc-mm: stopped following; job {', '.join(ids)} keeps running "
            f"(hpc-mm status {ids[0]}; hpc-mm cancel {ids[0]} stops it)",
            file=sys.stderr,
            flush=True,
        )
        raise


def followed(job_id: str, run_dir: Path) -> tuple[str, Path, int | None]:
    """What following a job needs: its id, its run directory, and the iterations it trains to."""
    spec = RunDir(run_dir).job
    return job_id, Path(run_dir), contract(spec).train_iters(spec)


def _wait(tasks: list[tuple[str, Path, int]], quiet: bool, deadline: float | None) -> dict[str, JobState]:
    followers = {job_id: Follower(run_dir, iters, stream=sys.stderr) for job_id, run_dir, iters in tasks}
    states: dict[str, JobState] = {}
    released: set[tuple[str, int | None]] = set()
    while True:
        for job_id, found in query.jobs(list(followers)).items():
            if found.state != states.get(job_id) and len(tasks) > 1 and not quiet:
                print(f"{time.strftime('%H:%M:%S')} job {job_id}: {found.state.value}", file=sys.stderr, flush=True)
            states[job_id] = found.state
            if found.reason == "BeginTime" and found.restarts and (job_id, found.restarts) not in released:
                # requeued, and held back by Slurm: where the job's own helper could not lift the hold
                # (finish.spawn_release), the one who follows it does
                released.add((job_id, found.restarts))
                time.sleep(SETTLE_SECONDS)  # (hold.py: the nodes refuse a relaunch within the second)
                query.release_hold(job_id)
        if len(tasks) == 1 and not quiet:
            job_id = tasks[0][0]
            followers[job_id].update(states[job_id].value if job_id in states else "SUBMITTED")
        if states and all(states.get(j, JobState.UNKNOWN).ended for j in followers):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {', '.join(followers)} still {', '.join(s.value for s in states.values())}")
        time.sleep(POLL)
    if len(tasks) == 1 and not quiet:
        followers[tasks[0][0]].close()
    if not quiet:
        for job_id, run_dir, _ in tasks:
            try:
                text = summary_text(summary(RunDir(run_dir)))
            except UserError:
                text = "no training iterations (see hpc-mm logs)"
            header = f"job {job_id}: {states[job_id].value}"
            print(f"{header}\n{text}" if len(tasks) > 1 or states[job_id] != JobState.COMPLETED else text, flush=True)
    return states
