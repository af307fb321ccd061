"""Follow a run: state from Slurm (through `query`), progress from the run directory."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.spec import nproc_hint
from hpc_mm.run import checkpoints, events, layout, metrics
from hpc_mm.slurm import query


# A line's rank: `[rank 3] ` (the built-in trainer: global rank), `[default1]:` (torchrun's
# --tee for other entries: local rank on the task's node).
_RANK_PREFIX = re.compile(r"\[rank (?P<rank>\d+)\] |\[default(?P<local>\d+)\]:")


def find_run_dir(target: str | None) -> Path:
    """A run directory from a path, a Slurm job id, or (None) the newest run under runs/."""
    if target is None:
        return layout.newest_run()
    found = layout.find_local_run(target)
    if found:
        return found
    if target.isdigit():
        log = query.batch_log(target)  # <run dir>/logs/<batch log>, while Slurm remembers the job
        if log and layout.is_run_dir(Path(log).parent.parent):
            return Path(log).parent.parent.resolve()
        raise UserError.one("JOB_ID", f"no run under ./{layout.RUNS} was submitted as job {target}",
                            "pass the run directory instead (printed by submit)")
    raise UserError.one("RUN_DIR", f"{target} is not a run directory (no {layout.JOB_FILE})",
                        "pass the run directory printed by submit, or a job id")


def run_job_id(run_dir: Path) -> str | None:
    """The run's Slurm job: recorded at submit or at start, else (plain sbatch, still queued)
    the queued job whose batch log goes into the run's log folder."""
    job_id = layout.read_run_file(run_dir).get("job_id")
    if job_id:
        return str(job_id)
    queued = query.queued_jobs_writing_to(str(Path(run_dir).resolve() / layout.LOGS))
    return queued[-1] if queued else None


def run_status(run_dir: Path) -> dict:
    spec = load_job(run_dir / layout.JOB_FILE)
    record = events.read(run_dir)
    job_id = run_job_id(run_dir)
    slurm = query.job_state(job_id) if job_id else {"state": _local_state(record)}
    last = metrics.last(run_dir)
    iterations = [e["iteration"] for e in record if isinstance(e.get("iteration"), int)]
    return {
        "run_dir": str(run_dir), "name": spec.name, "job_id": job_id, **slurm,
        "restarts": max((e.get("restart", 0) for e in record), default=0),
        "last_iteration": (last or {}).get("iteration", max(iterations, default=None)),
        "train_iters": spec.gpt.train_iters,
        "last_checkpoint": checkpoints.latest_iteration(layout.checkpoint_dir(spec, run_dir)),
        "last_loss": (last or {}).get("loss"),
        "last_event": record[-1]["event"] if record else None,
    }


def _local_state(record: list[dict]) -> str:
    states = {"started": "RUNNING", "completed": "COMPLETED", "failed": "FAILED", "signal": "STOPPED",
              "stopped": "STOPPED", "cancelled": "CANCELLED"}
    last = next((e["event"] for e in reversed(record) if e["event"] in states), None)
    return states.get(last, "UNKNOWN")


def print_status(target: str | None, as_json: bool = False) -> int:
    info = run_status(find_run_dir(target))
    if as_json:
        print(json.dumps(info, sort_keys=True))
        return 0
    for key in ("name", "job_id", "state", "exit_code", "nodes", "nodelist", "restarts", "last_iteration",
                "train_iters", "last_checkpoint", "last_loss", "last_event", "run_dir"):
        print(f"{key:16} {info.get(key)}")
    return 0


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


def cancel(target: str) -> int:
    run_dir = None if target.isdigit() else find_run_dir(target)
    job_id = target if run_dir is None else run_job_id(run_dir)
    if not job_id:
        raise UserError.one("RUN_DIR", f"{run_dir} has no Slurm job recorded (it never started under Slurm)",
                            "a local run stops with Ctrl-C; pass a job id otherwise")
    state = query.job_state(str(job_id))["state"]
    if state == "UNKNOWN":
        raise UserError.one("JOB_ID", f"Slurm knows no job {job_id}", "list your jobs with `squeue --me`")
    if state in query.ENDED:
        raise UserError.one("JOB_ID", f"job {job_id} has already ended ({state})", "nothing to cancel")
    ok, err = query.cancel(str(job_id))
    if not ok:
        raise UserError.one("JOB_ID", f"scancel {job_id} failed: {err}", "check `squeue --me`")
    print(f"cancelled job {job_id}")
    return 0
