"""`submit --wait`: follow a job (or a sweep's tasks) until it ends, with one line of progress,
then print the run's summary. Exit status 0 only if every task completed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run.follow import Follower
from hpc_mm.run.report import summary, summary_text
from hpc_mm.slurm import query

POLL = 3.0


def wait(tasks: list[tuple[str, Path, int]], quiet: bool = False) -> dict[str, str]:
    """Follow (job id, run directory, train_iters) until every job has ended; {job id: final state}."""
    followers = {job_id: Follower(run_dir, iters, stream=sys.stderr) for job_id, run_dir, iters in tasks}
    states: dict[str, str] = {}
    while True:
        found = query.jobs(list(followers))
        for job_id, info in found.items():
            state = info["state"].rstrip("+")
            if state != states.get(job_id) and len(tasks) > 1 and not quiet:
                print(f"{time.strftime('%H:%M:%S')} job {job_id}: {state}", file=sys.stderr, flush=True)
            states[job_id] = state
        if len(tasks) == 1 and not quiet:
            job_id = tasks[0][0]
            followers[job_id].update(states.get(job_id, "SUBMITTED"))
        if states and all(states.get(j) in query.ENDED for j in followers):
            break
        time.sleep(POLL)
    if len(tasks) == 1 and not quiet:
        followers[tasks[0][0]].close()
    if not quiet:
        for job_id, run_dir, _ in tasks:
            try:
                text = summary_text(summary(run_dir))
            except UserError:
                text = "no training iterations (see hpc-mm logs)"
            header = f"job {job_id}: {states[job_id]}"
            print(f"{header}\n{text}" if len(tasks) > 1 or states[job_id] != "COMPLETED" else text, flush=True)
    return states
