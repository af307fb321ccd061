"""Follow a run: state from Slurm (sacct, else scontrol/squeue), progress from the run directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from hpc_mm import checkpoint, events
from hpc_mm.errors import UserError
from hpc_mm.rundir import JOB_FILE, find_run_dir, submission
from hpc_mm.spec import checkpoint_dir, load_job

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _run(cmd: list[str]) -> str | None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def slurm_state(job_id: str) -> dict:
    """{'state', 'exit_code', 'nodes', 'nodelist', 'source'} from sacct, else scontrol, else squeue."""
    out = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NNodes,NodeList"])
    rows = [line.split("|") for line in (out or "").splitlines() if line.split("|")[0] == job_id]
    if rows:
        _, state, exit_code, nodes, nodelist = rows[-1]
        return {"state": state.split()[0], "exit_code": exit_code, "nodes": int(nodes or 0),
                "nodelist": nodelist, "source": "sacct"}
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out:
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        return {"state": fields.get("JobState", "UNKNOWN"), "exit_code": fields.get("ExitCode"),
                "nodes": int(fields.get("NumNodes", "0").split("-")[0] or 0), "nodelist": fields.get("NodeList"),
                "source": "scontrol"}
    out = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%D|%N"])
    if out and out.strip():
        state, nodes, nodelist = out.strip().split("|")
        return {"state": state, "exit_code": None, "nodes": int(nodes), "nodelist": nodelist, "source": "squeue"}
    return {"state": "UNKNOWN", "exit_code": None, "nodes": None, "nodelist": None, "source": None}


def last_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
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
    spec = load_job(run_dir / JOB_FILE)
    sub = submission(run_dir)
    record = events.read(run_dir)
    job_id = str(sub["job_id"]) if sub.get("job_id") else None
    slurm = slurm_state(job_id) if job_id else {"state": _local_state(record)}
    metrics = last_metrics(run_dir)
    iterations = [e["iteration"] for e in record if "iteration" in e]
    return {
        "run_dir": str(run_dir), "name": spec.name, "job_id": job_id, **slurm,
        "restarts": max((e.get("restart", 0) for e in record), default=0),
        "last_iteration": (metrics or {}).get("iteration", max(iterations, default=None)),
        "train_iters": spec.gpt.train_iters,
        "last_checkpoint": checkpoint.latest_iteration(checkpoint_dir(spec, run_dir)),
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
    logs = sorted((run_dir / "logs").glob("*-r*-t*.out"))
    if not logs:
        return sorted((run_dir / "logs").glob("*.out"))
    restarts = sorted({int(m.group(1)) for p in logs if (m := re.search(r"-r(\d+)-t\d+\.out$", p.name))})
    wanted = restart if restart is not None else restarts[-1]
    if wanted not in restarts:
        raise UserError.one("--restart", f"no logs for restart {wanted}", f"restarts with logs: {restarts}")
    return [p for p in logs if re.search(rf"-r{wanted}-t\d+\.out$", p.name)]


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
        job_id = submission(run_dir).get("job_id")
        if not job_id or slurm_state(str(job_id))["state"] in ENDED:
            return 0
        time.sleep(2)


def cancel(target: str) -> int:
    run_dir = find_run_dir(target) if not target.isdigit() else None
    job_id = str(submission(run_dir)["job_id"]) if run_dir else target
    result = subprocess.run(["scancel", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError.one("JOB_ID", f"scancel {job_id} failed: {result.stderr.strip()}", "check `squeue --me`")
    print(f"cancelled job {job_id}")
    return 0
