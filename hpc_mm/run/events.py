"""events.jsonl: the one record of a run's life, appended by the launchers, the trainer and
`finish`; and the JSON-lines reading every reader of the run directory shares.

One JSON object a line: ``event``, ``time``, ``job_id``, ``restart``, and ``iteration``
where known; checkpoints add ``reason`` and ``seconds``, signals the signal's ``name``.
Readers skip what a crash or a concurrent writer can leave behind (a cut line, bytes that are
not UTF-8, a value that is not an object, a folder where the file should be).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from hpc_mm.environments.base import restart_from
from hpc_mm.environments.slurm import job_id_of
from hpc_mm.run.layout import EVENTS as FILENAME

EVENTS = ("submitted", "started", "signal", "checkpoint", "requeued", "resumed", "completed", "failed", "stopped",
          "cancelled", "hang", "preflight", "quarantined", "gave_up")
# The events a start can end with (the last one of a run that is not running or queued).
TERMINAL = ("completed", "failed", "stopped", "requeued", "cancelled", "gave_up")


def _restart() -> int:
    return restart_from(os.environ)


def append(path: Path, entry: dict) -> None:
    """Append one JSON line; several nodes append, so under a lock, and after a line a crash cut
    short a newline first, so the new line stays whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            end = f.seek(0, os.SEEK_END)
            cut = end > 0 and os.pread(f.fileno(), 1, end - 1) != b"\n"
            f.write((b"\n" if cut else b"") + json.dumps(entry).encode() + b"\n")
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_objects(path: Path) -> list[dict]:
    """Every line of a JSON-lines file that is a JSON object; anything else is skipped."""
    try:
        data = Path(path).read_bytes()
    except OSError:  # absent, a folder, unreadable
        return []
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def record(run_dir: str | os.PathLike | None, event: str, **fields) -> dict | None:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")  # a bug in hpc-mm, not a user error
    if run_dir is None:
        return None
    entry = {"event": event, "time": round(time.time(), 3),
             "job_id": fields.pop("job_id", job_id_of(os.environ)),
             "restart": fields.pop("restart", _restart()), **fields}
    append(Path(run_dir) / FILENAME, entry)
    return entry


# The batch shell's clock at moments only it sees (bash's EPOCHREALTIME, exported by the script).
BATCH_CLOCK = {"batch_started_at": "HPC_MM_BATCH_STARTED_AT", "signal_at": "HPC_MM_SIGNAL_AT",
               "step_ended_at": "HPC_MM_STEP_ENDED_AT"}


def batch_times(env, *keys: str) -> dict:
    """{key: seconds since the epoch} for the batch shell's moments in `env` (when the script
    started, caught the first stop signal, saw the training step end): for status and report."""
    out = {}
    for key in keys:
        try:
            value = float(env.get(BATCH_CLOCK[key], "").replace(",", "."))  # EPOCHREALTIME follows the locale
        except ValueError:
            continue
        if 0 < value < float("inf"):
            out[key] = round(value, 3)
    return out


def restarts(record: list[dict]) -> int:
    """How many times the run was started again: the highest restart recorded, one more when
    that start already ended requeued (the next start is waiting, or on its way)."""
    highest = max((e.get("restart", 0) for e in record), default=0)
    return highest + any(e["event"] == "requeued" and e.get("restart", 0) == highest for e in record)


def read(run_dir: str | os.PathLike) -> list[dict]:
    """The run's events, oldest first; lines without a known event, a time or a whole restart
    number are skipped, so readers may rely on all three."""
    return [e for e in read_objects(Path(run_dir) / FILENAME)
            if e.get("event") in EVENTS and isinstance(e.get("restart", 0), int)
            and isinstance(e.get("time"), (int, float)) and not isinstance(e.get("time"), bool)]
