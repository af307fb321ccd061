"""The one way hpc-mm replaces a file: whole or not at all.

Every file a reader may open while it is being written (the run's record and job file, the step's
start files, a preflight result, the tracker of the committed checkpoint, the user's job index) goes
through `write_atomic`: the text goes into a hidden temporary file beside the target, which is then
renamed over it, so a reader (another node, `status`, the next start) sees the old file or the new
one, never half of either, and a kill at any moment leaves the old one in place. `durable` also
syncs the data and the folder before returning (what commits a checkpoint).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PRIVATE = 0o640  # a job's files hold its environment: its owner and group only


def write_atomic(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None, durable: bool = False) -> None:
    """Replace `path` with `data` atomically (`mode`: its permissions whatever the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` survive a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_folder(partial: str | os.PathLike, final: str | os.PathLike) -> None:
    """A folder written in full under another name takes its final name in one step: a reader finds
    the whole folder or none (a copy of the run's code)."""
    os.replace(partial, final)
    fsync_dir(Path(final).parent)
