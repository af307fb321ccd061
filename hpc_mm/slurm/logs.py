"""`hpc-mm logs`: a run's task logs, of one start (the newest by default), of one rank, or
followed as they grow.

A run directory may hold several jobs; each start writes its own logs
(`<name>-<job>-r<restart>-t<task>.out`). `--restart N` picks the run's N-th start, counted across
the run directory as `status` numbers them; `--job J` the newest start of job J; a job id given as
the target means that job.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from hpc_mm.environments.slurm import is_job_id
from hpc_mm.errors import UserError
from hpc_mm.job.spec import nproc_hint
from hpc_mm.run.layout import TaskLog, parse_task_log
from hpc_mm.run.rundir import RunDir, Start
from hpc_mm.slurm import query
from hpc_mm.slurm.runs import find_run, job_of

# A line's rank: `[rank 3] ` (the built-in trainer: global rank), `[default1]:` (torchrun's
# --tee for other entries: local rank on the task's node).
_RANK_PREFIX = re.compile(r"\[rank (?P<rank>\d+)\] |\[default(?P<local>\d+)\]:")


def task_logs(run: RunDir) -> list[tuple[TaskLog, Path]]:
    try:
        found = [(parse_task_log(p.name), p) for p in run.logs.iterdir() if p.is_file()]
    except OSError:
        return []
    return sorted(((parsed, p) for parsed, p in found if parsed), key=lambda item: (item[0].task, item[1].name))


def pick_start(run: RunDir, job: str | None, restart: int | None) -> Start | None:
    """The start whose logs to show: `restart` (run-wide number), else the newest of `job` (or of
    the run) that wrote logs. None when the run has no logs of any start yet."""
    logs = task_logs(run)
    starts = run.starts()
    if restart is not None:
        chosen = next((s for s in starts if s.number == restart), None)
        if chosen is None:
            raise UserError.one(
                "--restart",
                f"the run has no start {restart}",
                f"its starts are 0..{len(starts) - 1} (hpc-mm status RUN_DIR lists them)",
            )
        if job is not None and chosen.job_id != job:
            raise UserError.one(
                "--restart",
                f"start {restart} was job {chosen.job_id}, not job {job}",
                "give one of --job and --restart",
            )
        return chosen
    candidates = [s for s in starts if (job is None or s.job_id == job) and any(_wrote(s, t) for t, _ in logs)]
    if job is not None and not any(s.job_id == job for s in starts):
        raise UserError.one("--job", f"job {job} did not run {run.path}", "hpc-mm status RUN_DIR lists the run's jobs")
    return candidates[-1] if candidates else None


def _wrote(start: Start, log: TaskLog) -> bool:
    """Is `log` one of `start`'s? (A run recorded without job ids matches by restart alone.)"""
    return log.restart == start.key.restart and start.job_id in (None, log.job)


def log_files(run: RunDir, start: Start | None) -> list[Path]:
    """The task logs of one start, in task order (a run with logs but no record: all of them)."""
    found = task_logs(run)
    if start is None:
        return [p for _, p in found] if not run.starts() else []
    return [p for t, p in found if _wrote(start, t)]


def _rank_filter(run: RunDir, start: Start | None, rank: int):
    """Which task log holds `rank`, and which of its lines are that rank's: its own `[rank N]`
    lines and the task's unprefixed ones (a crash, a traceback)."""
    spec = run.job
    began = start.started if start is not None else None
    world = (began.get("world_size") if began else None) or spec.nnodes * (nproc_hint(spec) or 1)
    if not 0 <= rank < world:
        raise UserError.one("--rank", f"{rank} is not a rank of this run (ranks 0..{world - 1})")
    per_task = 1 if spec.entry.launcher == "srun" else max(1, world // spec.nnodes)
    task, local = divmod(rank, per_task)

    def keep(path: Path, line: str) -> bool:
        parsed = parse_task_log(path.name)
        if parsed and parsed.task != task:
            return False
        prefix = _RANK_PREFIX.match(line)
        if prefix is None:
            return True
        if prefix["rank"] is not None:
            return int(prefix["rank"]) == rank
        return int(prefix["local"]) == local

    return keep


def print_logs(
    target: str, rank: int | None = None, restart: int | None = None, follow: bool = False, job: str | None = None
) -> int:
    run = find_run(target)
    if job is None and is_job_id(target) and not Path(target).exists():
        job = target
    start = pick_start(run, job, restart)
    keep = _rank_filter(run, start, rank) if rank is not None else None
    offsets: dict[Path, int] = {}
    if not log_files(run, start):
        print(
            f"hpc-mm: no logs yet in {run.logs} (the job has not started{', waiting' if follow else ''})",
            file=sys.stderr,
        )
    while True:
        for path in log_files(run, start):
            try:
                with open(path, errors="replace") as f:
                    f.seek(offsets.get(path, 0))
                    for line in f:
                        if keep is None or keep(path, line):
                            sys.stdout.write(line)
                    offsets[path] = f.tell()
            except OSError:
                continue  # removed or unreadable since we listed it
        sys.stdout.flush()
        if not follow:
            return 0
        job_id = job_of(run)
        if not job_id or query.job(job_id).ended:
            return 0
        time.sleep(2)
        if start is None or (restart is None and job is None):  # follow the newest start as the run goes on
            start = pick_start(run.reread(), job, restart) or start
