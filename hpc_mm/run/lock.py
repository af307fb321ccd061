"""One run directory, one run: an advisory lock held for the life of a run.

The node-0 leader of `hpc-mm launch` (or `hpc-mm local`, for the emulated nodes it starts)
holds an exclusive flock on `<run dir>/run.lock` and writes who it is into it. The kernel
drops the lock when the holder exits, however it exits, so a crashed run never leaves the
directory locked. Only one process per run takes it, so it works where the run directory is
on a shared filesystem (flock over NFS is one lock per host, and only node 0 locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run.layout import lock_file, refuse_foreign

# Set by `hpc-mm local` for the processes it starts: they run under its lock.
INHERITED = "HPC_MM_RUN_LOCK_HOLDER"


class RunLock:
    def __init__(self, run_dir: Path, fd: int | None):
        self.run_dir, self._fd = run_dir, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe(holder: dict) -> str:
    job = f"job {holder['job_id']}, " if holder.get("job_id") else ""
    return f"{job}pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def holder(run_dir: Path) -> dict | None:
    """Who runs in this directory now (None: nobody). Reading takes no lock of its own."""
    path = lock_file(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.read(fd, 4096).decode() or "{}")
            except (ValueError, UnicodeDecodeError):
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire(run_dir: Path, job_id: str | None = None, env: dict | None = None) -> RunLock:
    """Lock `run_dir` for this process, or raise a UserError naming the run that holds it."""
    env = os.environ if env is None else env
    run_dir = Path(run_dir)
    refuse_foreign(run_dir)
    current = holder(run_dir)
    if (
        current is not None
        and str(current.get("pid")) == env.get(INHERITED)
        and current.get("host") == socket.gethostname()
    ):
        return RunLock(run_dir, None)  # started by `hpc-mm local`, which holds it for us
    run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError.one(
            "--run-dir",
            f"{run_dir} is in use by another run ({describe(holder(run_dir) or {})})",
            "wait for it to end, stop it (hpc-mm cancel), or use another --run-dir",
        ) from None
    os.ftruncate(fd, 0)
    os.write(
        fd,
        json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id, "since": round(time.time(), 3)}
        ).encode(),
    )
    return RunLock(run_dir, fd)
