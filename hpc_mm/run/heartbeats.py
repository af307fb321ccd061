"""heartbeats/: one small file per node and start, rewritten every few seconds while the step
runs (launch/watchdog.py writes them; the watchdog on node 0 and `finish` read them).

    heartbeats/r<restart>-n<node rank>.json   node, host, time, last iteration, phase, ranks' states
    heartbeats/r<restart>-hang.json           written by node 0 when it declares the step hung
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_mm.run.layout import HEARTBEATS


def path(run_dir: Path, restart: int, node: int) -> Path:
    return Path(run_dir) / HEARTBEATS / f"r{restart}-n{node}.json"


def hang_marker(run_dir: Path, restart: int) -> Path:
    return Path(run_dir) / HEARTBEATS / f"r{restart}-hang.json"


def write(target: Path, value: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, target)


def read(run_dir: Path, restart: int) -> list[dict]:
    out = []
    for found in sorted((Path(run_dir) / HEARTBEATS).glob(f"r{restart}-n*.json")):
        try:
            beat = json.loads(found.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(beat, dict):
            out.append(beat)
    return out
