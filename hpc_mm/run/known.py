"""Where each of your jobs ran: job id -> run directory (or a sweep's folder), remembered per user in
$XDG_STATE_HOME/hpc-mm/jobs.jsonl (default ~/.local/state/hpc-mm/), so that `status`, `report`,
`logs` and `cancel` find a job by its id from any folder, also after Slurm has forgotten it. It holds
job ids and paths only. A line that does not read is skipped; the file is kept to its newest lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_mm.run.atomic import write_atomic
from hpc_mm.run.records import read_objects

KEEP = 5000  # lines kept when the file is trimmed
TRIM_AT = 1 << 20  # bytes


def index_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hpc-mm" / "jobs.jsonl"


def remember(job_id: str, path: str | os.PathLike) -> None:
    """Note that `job_id` runs in `path`; never fails the caller (an unwritable home is no error)."""
    target = index_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"job_id": str(job_id), "path": str(Path(path).resolve())}) + "\n"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        if target.stat().st_size > TRIM_AT:
            _trim(target)
    except OSError:
        pass


def recall(job_id: str) -> Path | None:
    """The newest place `job_id` was noted running, if it is still there."""
    for entry in reversed(read_objects(index_file())):
        if entry.get("job_id") == str(job_id) and isinstance(entry.get("path"), str):
            path = Path(entry["path"])
            return path if path.is_dir() else None
    return None


def _trim(target: Path) -> None:
    lines = target.read_text(errors="replace").splitlines()[-KEEP:]
    write_atomic(target, "".join(f"{line}\n" for line in lines))
