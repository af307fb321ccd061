"""Follow a run: state from Slurm (through `query`), progress from the run directory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import checkpoints, events, layout
from hpc_mm.slurm import query


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


def last_metrics(run_dir: Path) -> dict | None:
    path = run_dir / layout.METRICS
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.startswith("{")]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def run_status(run_dir: Path) -> dict:
    spec = load_job(run_dir / layout.JOB_FILE)
    record = events.read(run_dir)
    job_id = run_job_id(run_dir)
    slurm = query.job_state(job_id) if job_id else {"state": _local_state(record)}
    metrics = last_metrics(run_dir)
    iterations = [e["iteration"] for e in record if "iteration" in e]
    return {
        "run_dir": str(run_dir), "name": spec.name, "job_id": job_id, **slurm,
        "restarts": max((e.get("restart", 0) for e in record), default=0),
        "last_iteration": (metrics or {}).get("iteration", max(iterations, default=None)),
        "train_iters": spec.gpt.train_iters,
        "last_checkpoint": checkpoints.latest_iteration(layout.checkpoint_dir(spec, run_dir)),
        "last_loss": (metrics or {}).get("loss"),
        "last_event": record[-1]["event"] if record else None,
    }


def _local_state(record: list[dict]) -> str:
    last = next((e["event"] for e in reversed(record) if e["event"] in ("started", "completed", "failed", "signal")), None)
    return {"started": "RUNNING", "completed": "COMPLETED", "failed": "FAILED", "signal": "STOPPED"}.get(last, "UNKNOWN")


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
    logs = sorted(p for p in (run_dir / layout.LOGS).glob("*.out") if layout.parse_task_log(p.name))
    if not logs:
        return sorted((run_dir / layout.LOGS).glob("*.out"))
    restarts = sorted({layout.parse_task_log(p.name)[0] for p in logs})
    wanted = restart if restart is not None else restarts[-1]
    if wanted not in restarts:
        raise UserError.one("--restart", f"no logs for restart {wanted}", f"restarts with logs: {restarts}")
    return [p for p in logs if layout.parse_task_log(p.name)[0] == wanted]


def print_logs(target: str, rank: int | None = None, restart: int | None = None, follow: bool = False) -> int:
    run_dir = find_run_dir(target)
    prefix = f"[rank {rank}] " if rank is not None else None
    offsets: dict[Path, int] = {}
    while True:
        for path in log_files(run_dir, restart):
            with open(path, errors="replace") as f:
                f.seek(offsets.get(path, 0))
                for line in f:
                    if prefix is None or line.startswith(prefix):
                        sys.stdout.write(line)
                offsets[path] = f.tell()
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
    ok, err = query.cancel(str(job_id))
    if not ok:
        raise UserError.one("JOB_ID", f"scancel {job_id} failed: {err}", "check `squeue --me`")
    print(f"cancelled job {job_id}")
    return 0
