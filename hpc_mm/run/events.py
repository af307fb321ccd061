"""events.jsonl: the one record of a run's life, appended by the launcher and the trainer.

One JSON object a line: ``event``, ``time``, ``job_id``, ``restart``, and ``iteration``
where known; checkpoints add ``reason`` and ``seconds``, signals the signal's ``name``.
status, report and the tests read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from hpc_mm.run.layout import EVENTS as FILENAME

EVENTS = ("submitted", "started", "signal", "checkpoint", "requeued", "resumed", "completed", "failed")


def record(run_dir: str | os.PathLike | None, event: str, **fields) -> dict | None:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")  # a bug in hpc-mm, not a user error
    if run_dir is None:
        return None
    entry = {"event": event, "time": round(time.time(), 3),
             "job_id": fields.pop("job_id", os.environ.get("SLURM_JOB_ID")),
             "restart": fields.pop("restart", int(os.environ.get("SLURM_RESTART_COUNT") or 0)), **fields}
    path = Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # several nodes append: lock so lines never interleave
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(entry) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
    return entry


def read(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a node's crash: skip it, keep the rest
    return out
