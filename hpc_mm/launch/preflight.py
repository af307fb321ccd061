"""Checks before training starts, so that what would fail later fails now, in one line: the
entry's folder, the run directory and the checkpoint folder writable, and room for a checkpoint."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from hpc_mm.errors import Problem, UserError
from hpc_mm.run import checkpoints

MIN_FREE = 256 * 2**20  # with no checkpoint yet to size one by


def writable(where: str, folder: Path) -> list[Problem]:
    """Can this process create a file in `folder` (making it if needed)?"""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hpc-mm-probe-"):
            pass
    except OSError as exc:
        return [Problem(where, f"{folder} is not writable on {socket.gethostname()} ({exc.strerror})",
                        "fix its permissions, or point it at a writable folder")]
    return []


def room_for_checkpoints(folder: Path, count: int = 2) -> list[Problem]:
    """Free space for `count` checkpoints the size of the last one (or MIN_FREE before the first)."""
    last = checkpoints.latest_iteration(folder)
    size = sum(p.stat().st_size for p in checkpoints.iter_dir(folder, last).rglob("*") if p.is_file()) if last else 0
    need = max(count * size, MIN_FREE)
    free = shutil.disk_usage(folder).free
    if free < need:
        return [Problem("checkpoint.dir", f"{folder} has {free / 2**20:.0f} MiB free on {socket.gethostname()}, "
                        f"less than the {need / 2**20:.0f} MiB {count} checkpoints need",
                        "free space there, or point checkpoint.dir at a larger filesystem")]
    return []


def storage(run_dir: Path, checkpoint_dir: Path) -> None:
    """The run directory and the checkpoint folder, checked by the leader before training."""
    problems = writable("--run-dir", run_dir)
    if not problems:
        problems = writable("checkpoint.dir", checkpoint_dir) or room_for_checkpoints(checkpoint_dir)
    if problems:
        raise UserError(problems)


def workdir(path: Path) -> None:
    if not path.is_dir():
        raise UserError.one("entry.workdir", f"{path} does not exist on {socket.gethostname()}",
                            "point it at your MindSpeed-MM checkout on the compute nodes")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError.one("entry.workdir", f"{path} is not readable on {socket.gethostname()}")
