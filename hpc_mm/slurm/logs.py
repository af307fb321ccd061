"""`hpc-mm logs`: a run's task logs, of one start, of one rank, or followed as they grow."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.spec import nproc_hint
from hpc_mm.run import events, layout
from hpc_mm.slurm import query
from hpc_mm.slurm.status import find_run_dir, run_job_id

# A line's rank: `[rank 3] ` (the built-in trainer: global rank), `[default1]:` (torchrun's
# --tee for other entries: local rank on the task's node).
_RANK_PREFIX = re.compile(r"\[rank (?P<rank>\d+)\] |\[default(?P<local>\d+)\]:")


def log_files(run_dir: Path, restart: int | None) -> list[Path]:
    """The task logs of one restart (the latest by default), in task order."""
    folder = run_dir / layout.LOGS
    try:
        found = [(layout.parse_task_log(p.name), p) for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []
    tasks = sorted((parsed, p) for parsed, p in found if parsed)
    if not tasks:
        return sorted(p for _, p in found if p.suffix == ".out")
    restarts = sorted({r for (r, _), _ in tasks})
    wanted = restart if restart is not None else restarts[-1]
    if wanted not in restarts:
        raise UserError.one("--restart", f"no logs for restart {wanted}", f"restarts with logs: {restarts}")
    return [p for (r, _), p in tasks if r == wanted]


def _rank_filter(run_dir: Path, spec, rank: int, restart: int | None):
    """Which task log holds `rank`, and which of its lines are that rank's: its own `[rank N]`
    lines and the task's unprefixed ones (a crash, a traceback)."""
    started = [e for e in events.read(run_dir) if e["event"] == "started"
               and (restart is None or e.get("restart") == restart)]
    world = (started[-1].get("world_size") if started else None) or spec.nnodes * (nproc_hint(spec) or 1)
    if not 0 <= rank < world:
        raise UserError.one("--rank", f"{rank} is not a rank of this run (ranks 0..{world - 1})")
    per_task = 1 if spec.entry.launcher == "srun" else max(1, world // spec.nnodes)
    task, local = divmod(rank, per_task)

    def keep(path: Path, line: str) -> bool:
        parsed = layout.parse_task_log(path.name)
        if parsed and parsed[1] != task:
            return False
        prefix = _RANK_PREFIX.match(line)
        if prefix is None:
            return True
        if prefix["rank"] is not None:
            return int(prefix["rank"]) == rank
        return int(prefix["local"]) == local

    return keep


def print_logs(target: str, rank: int | None = None, restart: int | None = None, follow: bool = False) -> int:
    run_dir = find_run_dir(target)
    keep = None
    if rank is not None:
        keep = _rank_filter(run_dir, load_job(run_dir / layout.JOB_FILE), rank, restart)
    offsets: dict[Path, int] = {}
    while True:
        for path in log_files(run_dir, restart):
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
        job_id = run_job_id(run_dir)
        if not job_id or query.job_state(job_id)["state"] in query.ENDED:
            return 0
        time.sleep(2)
