"""Checks before training starts, so that what would fail later fails now, in one line naming
the node: the entry's folder, the entry's interpreter and the modules its device needs, the run
directory and the checkpoint folder writable, and room for checkpoints."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from hpc_mm.environments.devices import MODULES
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


_FIND = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"


def needed_modules(device: str, workdir: Path, builtin: bool) -> tuple[str, ...]:
    """What the entry's interpreter must be able to import: torch (and torch_npu on NPUs), and
    mindspeed with mindspeed_mm when the entry is MindSpeed-MM (its checkout holds mindspeed_mm/)."""
    modules = MODULES[device]
    if not builtin and (workdir / "mindspeed_mm").is_dir():
        modules += ("mindspeed", "mindspeed_mm")
    return modules


def interpreter(command: list[str], workdir: Path, modules: tuple[str, ...], field: str = "entry.python") -> None:
    """Run the entry's interpreter (through its wrapper) once, in its workdir, and ask it for `modules`."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    shown = " ".join(command)
    try:
        result = subprocess.run([*command, "-c", _FIND, *modules], cwd=workdir, capture_output=True, text=True,
                                timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError.one(field, f"cannot run {shown} on {node} ({exc.__class__.__name__}: {exc})",
                            "set entry.python (and entry.wrapper) to an interpreter that exists on the compute nodes") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError.one(field, f"{shown} does not start on {node}: {last}",
                            "set entry.python (and entry.wrapper) to an interpreter that works on the compute nodes")
    missing = result.stdout.split()
    if missing:
        raise UserError.one(field, f"{shown} on {node} cannot import {', '.join(missing)}, which this job needs",
                            "install it into that environment, or point entry.python at one that has it "
                            "(torch_npu comes with CANN's Ascend Extension for PyTorch)")
