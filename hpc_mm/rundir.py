"""The run directory: one per submission, the place every part of a run writes to.

    runs/<name>-<time>/
      job.yaml          the resolved job (absolute paths, every default filled)
      job.sbatch        the script that was submitted (submit/render)
      submission.json   job id and when it was submitted
      logs/             batch log and one log per task and restart
      checkpoints/      Megatron layout (unless checkpoint.dir says elsewhere)
      events.jsonl      the record of the run's life (events.py)
      metrics.jsonl     one line per training iteration (built-in trainer)
"""

from __future__ import annotations

import json
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.spec import JobSpec, default_run_dir, dump_job

JOB_FILE = "job.yaml"
SCRIPT_FILE = "job.sbatch"
SUBMISSION_FILE = "submission.json"
RUNS = Path("runs")


def prepare_run_dir(spec: JobSpec, run_dir: Path | None) -> Path:
    """Create the run directory and write the resolved job file into it."""
    run_dir = Path(run_dir or default_run_dir(spec)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    dump_job(spec, run_dir / JOB_FILE)
    return run_dir


def submission(run_dir: Path) -> dict:
    path = Path(run_dir) / SUBMISSION_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def find_run_dir(target: str | None) -> Path:
    """A run directory from a path, a Slurm job id, or (None) the newest run under runs/."""
    if target is None:
        runs = sorted((p for p in RUNS.glob("*") if (p / JOB_FILE).exists()), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError.one("RUN_DIR", "no runs under ./runs", "pass a run directory or a job id")
        return runs[-1].resolve()
    path = Path(target)
    if (path / JOB_FILE).exists():
        return path.resolve()
    if target.isdigit():
        for candidate in RUNS.glob(f"*/{SUBMISSION_FILE}"):
            if str(submission(candidate.parent).get("job_id")) == target:
                return candidate.parent.resolve()
        found = _run_dir_from_slurm(target)
        if found:
            return found
        raise UserError.one("JOB_ID", f"no run under ./runs was submitted as job {target}",
                            "pass the run directory instead (printed by submit)")
    raise UserError.one("RUN_DIR", f"{target} is not a run directory (no {JOB_FILE})",
                        "pass the run directory printed by submit, or a job id")


def _run_dir_from_slurm(job_id: str) -> Path | None:
    """Slurm knows the batch log's path while it remembers the job; the run dir holds it."""
    import re
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"StdOut=(.+?)(?= \w+=|$)", out.stdout.strip())
    if not match:
        return None
    run_dir = Path(match.group(1)).parent.parent
    return run_dir.resolve() if (run_dir / JOB_FILE).exists() else None
