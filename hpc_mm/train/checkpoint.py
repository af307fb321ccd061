"""The built-in trainer's checkpoints: Megatron's layout (see `hpc_mm.run.checkpoints`),
written atomically, with retention.

A save writes into a hidden temporary folder, fsyncs the file and the folders, renames the
folder into place, and only then replaces the tracker (temporary file + fsync + rename).
A crash or `kill -9` at any moment therefore leaves the tracker pointing at a complete
checkpoint. Loading falls back to the newest older checkpoint that loads, with a warning,
if the latest one is corrupt.

Reading the tracker needs no torch and lives in `hpc_mm.run.checkpoints`; this module saves and loads.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run.checkpoints import (FILENAME, TRACKER, checkpoint_file, iter_dir, latest_iteration,
                                    saved_iterations)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tracker(save_dir: Path, iteration: int) -> None:
    tmp = save_dir / f".{TRACKER}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, save_dir / TRACKER)
    _fsync_dir(save_dir)


def save(save_dir: str | os.PathLike, iteration: int, state: dict, keep_last: int | None = None) -> float:
    """Write `state` as iteration `iteration`, commit it, prune old ones; return seconds taken."""
    import torch

    start = time.monotonic()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if latest_iteration(save_dir) == iteration and checkpoint_file(save_dir, iteration).exists():
        return 0.0  # already committed (a resumed run stopped again at once): nothing new to write
    final = iter_dir(save_dir, iteration)
    tmp = save_dir / f".tmp.{final.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "mp_rank_00").mkdir(parents=True)
    with open(tmp / "mp_rank_00" / FILENAME, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp / "mp_rank_00")
    _fsync_dir(tmp)
    if final.exists():  # complete but never committed (a crash before the tracker): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(save_dir)
    _write_tracker(save_dir, iteration)
    prune(save_dir, keep_last)
    return time.monotonic() - start


def prune(save_dir: Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` checkpoints (never the committed one); drop dead temporaries."""
    committed = latest_iteration(save_dir)
    if keep_last:
        for iteration in saved_iterations(save_dir)[:-keep_last]:
            if iteration != committed:
                shutil.rmtree(iter_dir(save_dir, iteration), ignore_errors=True)
    for tmp in Path(save_dir).glob(".tmp.iter_*"):
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_latest(load_dir: str | os.PathLike | None, map_location: str = "cpu") -> tuple[int, dict] | None:
    """The newest loadable checkpoint as (iteration, state); None for an empty or absent folder.

    A corrupt latest checkpoint falls back to an older one with a warning; a folder that has
    checkpoints of which none loads is a user error, never a silent fresh start.
    """
    import torch

    if not load_dir:
        return None
    load_dir = Path(load_dir)
    if load_dir.exists() and not load_dir.is_dir():
        raise UserError.one("--load", f"{load_dir} is not a directory", "point --load at a checkpoint folder")
    tracked = latest_iteration(load_dir)
    found = saved_iterations(load_dir)
    if tracked is None and not found:
        if (load_dir / TRACKER).exists():
            raise UserError.one("--load", f"{load_dir / TRACKER} does not hold an iteration number",
                                "restore it, or delete it to start from the newest iter_* folder")
        return None  # nothing there yet: a fresh start
    candidates = ([tracked] if tracked is not None else []) + [i for i in reversed(found)
                                                               if tracked is None or i < tracked]
    for iteration in candidates:
        path = checkpoint_file(load_dir, iteration)
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # truncated or garbled file: try the one before
            print(f"WARNING: checkpoint {path} cannot be loaded ({exc.__class__.__name__}: {exc}); "
                  "trying the previous one", file=sys.stderr, flush=True)
            continue
        if iteration != tracked:
            print(f"WARNING: resuming from iteration {iteration}, not the tracker's {tracked}",
                  file=sys.stderr, flush=True)
        return iteration, state
    raise UserError.one("--load", f"no loadable checkpoint in {load_dir} (tried iterations {candidates})",
                        "the checkpoints are corrupt or missing; point --load elsewhere or move them away")


class AsyncSaver:
    """Save in a background thread: the state is copied first, so training goes on at once."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_seconds = 0.0

    def save(self, save_dir, iteration: int, state: dict, keep_last: int | None, on_done=None) -> None:
        import torch

        self.wait()
        snapshot = _clone(state, torch)

        def work():
            try:
                self.last_seconds = save(save_dir, iteration, snapshot, keep_last)
                if on_done:
                    on_done(iteration, self.last_seconds)
            except BaseException as exc:  # surfaced by wait() in the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name=f"save-iter-{iteration}", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _clone(obj, torch):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v, torch) for v in obj)
    return obj
