"""heartbeats/: one small file per node and start, rewritten every few seconds while the step
runs (launch/watchdog.py writes them; the watchdog on node 0 and `finish` read them).

    heartbeats/r<restart>-n<node rank>.json   node, host, time, last iteration, phase, ranks' states
    heartbeats/r<restart>-n<node rank>-t<local rank>.json   the same, one a task when srun starts
                                              every rank (several launchers on one node)
    heartbeats/r<restart>-hang.json           written by node 0 when it declares the step hung
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_mm.run.layout import HEARTBEATS


def path(run_dir: Path, restart: int, node: int, task: int | None = None) -> Path:
    """The file of one launcher: a node's (torchrun), or one task's on that node (srun starts every rank)."""
    name = f"r{restart}-n{node}" if task is None else f"r{restart}-n{node}-t{task}"
    return Path(run_dir) / HEARTBEATS / f"{name}.json"


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


def ended_by_host(beats: list[dict]) -> dict[str, bool]:
    """Per host: did every launcher there say goodbye (`ended`)?"""
    out: dict[str, bool] = {}
    for beat in beats:
        host = beat.get("host")
        out[host] = out.get(host, True) and bool(beat.get("ended"))
    return out
