"""The built-in trainer's checkpoints: Megatron's layout (see `hpc_mm.run.checkpoints`),
written atomically, verified, and loaded without ever running code.

A save writes into a hidden temporary folder (the model file through `DurableWriter`, then a
manifest of sizes and CRC-32s), fsyncs, renames the folder into place, and only then replaces the tracker. A crash
or `kill -9` at any moment leaves the tracker pointing at a whole checkpoint; a save that
fails (a full disk) removes its temporary folder and leaves the previous checkpoint the
resume point. Loading checks the manifest, unpickles with `weights_only=True` (only tensors,
containers and the numpy types of the RNG state; anything else is refused, never run), and
falls back to an older checkpoint when the latest is corrupt, repairing the tracker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run.atomic import fsync_dir
from hpc_mm.run.checkpoints import (
    FILENAME,
    TRACKER,
    checkpoint_file,
    iter_dir,
    latest_iteration,
    saved_iterations,
    verify,
    write_manifest,
    write_tracker,
)
from hpc_mm.run.durable import DurableWriter

_FULL = {errno.ENOSPC, errno.EDQUOT}
_TMP = re.compile(r"^\.tmp\.iter_\d{7}\.(?P<host>.+)\.(?P<pid>\d+)$")


def save(save_dir: str | os.PathLike, iteration: int, state: dict, keep_last: int | None = None) -> float:
    """Write `state` as iteration `iteration`, commit it, prune old ones; return seconds taken."""
    import torch

    start = time.monotonic()
    save_dir = Path(save_dir)
    if latest_iteration(save_dir) == iteration and verify(save_dir, iteration).ok:
        return 0.0  # already committed and whole (a resumed run stopped again at once)
    final = iter_dir(save_dir, iteration)
    tmp = save_dir / f".tmp.{final.name}.{socket.gethostname()}.{os.getpid()}"
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(save_dir)  # a failed save's leftovers must not fill the disk
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "mp_rank_00").mkdir(parents=True)
        with DurableWriter(tmp / "mp_rank_00" / FILENAME) as writer, _no_zip_crc():
            torch.save(state, writer)  # checksummed by the writer, fsynced at close
        write_manifest(tmp, {f"mp_rank_00/{FILENAME}": writer})
        fsync_dir(tmp / "mp_rank_00")
        fsync_dir(tmp)
        if final.exists():  # never committed (a crash before the tracker) or corrupt: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(save_dir)
        write_tracker(save_dir, iteration)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_error(save_dir, iteration, exc) from None
    prune(save_dir, keep_last)
    return time.monotonic() - start


@contextlib.contextmanager
def _no_zip_crc():
    """torch.save's own CRC-32 of every zip record is a second pass over the whole state on the
    training thread (a third of a save's time); the writer's CRC-32 covers the file instead.
    torch.load does not check it. Older torch without the switch computes it as before."""
    try:
        from torch.utils.serialization import config
    except ImportError:
        config = None
    save = getattr(config, "save", None)
    if save is None or not hasattr(save, "compute_crc32"):
        yield
        return
    before, save.compute_crc32 = save.compute_crc32, False
    try:
        yield
    finally:
        save.compute_crc32 = before


def save_error(save_dir: Path, iteration: int, exc: BaseException) -> UserError:
    """One line: what failed, where, and for a full disk how much room there is."""
    try:
        free = shutil.disk_usage(save_dir if save_dir.exists() else save_dir.parent).free
    except OSError:
        free = None
    full = getattr(exc, "errno", None) in _FULL or (free is not None and free < 64 * 2**20)
    previous = latest_iteration(save_dir)
    kept = f"checkpoint {previous} stays the resume point" if previous is not None else "no checkpoint yet"
    if full:
        return UserError.one(
            "checkpoint.dir",
            f"no space left to save iteration {iteration} in {save_dir} ({(free or 0) / 2**20:.0f} MiB free); {kept}",
            "free space there, or point checkpoint.dir at a larger filesystem",
        )
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    return UserError.one(
        "checkpoint.dir",
        f"cannot save iteration {iteration} in {save_dir} ({reason}); {kept}",
        "check that the folder is writable from every node",
    )


def remove_dead_temporaries(save_dir: Path) -> None:
    """Temporary folders of writers that died on this host (another host's are left alone)."""
    host = socket.gethostname()
    for tmp in Path(save_dir).glob(".tmp.iter_*"):
        match = _TMP.match(tmp.name)
        if match and match.group("host") == host and not _alive(int(match.group("pid"))):
            shutil.rmtree(tmp, ignore_errors=True)


def prune(save_dir: Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` checkpoints (never the committed one)."""
    committed = latest_iteration(save_dir)
    if keep_last:
        for iteration in saved_iterations(save_dir)[:-keep_last]:
            if iteration != committed:
                shutil.rmtree(iter_dir(save_dir, iteration), ignore_errors=True)
    remove_dead_temporaries(save_dir)


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


def _safe_globals() -> list:
    """What a checkpoint may hold besides tensors and containers: numpy's RNG state."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def safe_load(path: Path, map_location: str = "cpu") -> dict:
    """torch.load with weights_only=True; a checkpoint that asks for any other global is refused."""
    import torch

    with torch.serialization.safe_globals(_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise
            match = re.search(r"GLOBAL (\S+)", str(exc))
            what = match.group(1) if match else "a Python object"
            raise UserError.one(
                "--load",
                f"{path} asks to run {what} when loaded; refusing it (a checkpoint "
                "holds only tensors and plain values)",
                "it was not written by a trainer: remove it, and check who can write there",
            ) from None


def load_latest(
    load_dir: str | os.PathLike | None, map_location: str = "cpu", repair: bool = False
) -> tuple[int, dict] | None:
    """The newest whole, loadable checkpoint as (iteration, state); None for an empty or absent folder.

    A corrupt latest checkpoint falls back to an older one with a warning (and, with `repair`,
    the tracker is set to the one loaded, so that the next save of that iteration writes it
    afresh and requeue measures progress from the truth); a folder that has checkpoints of
    which none loads is a user error, never a silent fresh start.
    """
    if not load_dir:
        return None
    load_dir = Path(load_dir)
    if load_dir.exists() and not load_dir.is_dir():
        raise UserError.one("--load", f"{load_dir} is not a directory", "point --load at a checkpoint folder")
    tracked = latest_iteration(load_dir)
    found = saved_iterations(load_dir)
    if tracked is None and not found:
        if (load_dir / TRACKER).exists():
            raise UserError.one(
                "--load",
                f"{load_dir / TRACKER} does not hold an iteration number",
                "restore it, or delete it to start from the newest iter_* folder",
            )
        return None  # nothing there yet: a fresh start
    candidates = ([tracked] if tracked is not None else []) + [
        i for i in reversed(found) if tracked is None or i < tracked
    ]
    for iteration in candidates:
        path = checkpoint_file(load_dir, iteration)
        verdict = verify(load_dir, iteration)  # sizes: cheap
        if not verdict.ok:
            _warn(f"checkpoint {iteration} is not whole ({verdict.detail}); trying the previous one")
            continue
        # The checksums are read beside the load, not before it: the file is read from the disk once
        # (the second reader follows the first through the page cache), and nothing loaded is used
        # unless they match.
        deep = _Background(verify, load_dir, iteration, True)
        try:
            state = safe_load(path, map_location)
        except UserError:
            raise  # a planted pickle is refused outright, never stepped over
        except Exception as exc:  # truncated or garbled file: try the one before
            deep.result()
            _warn(f"checkpoint {path} cannot be loaded ({exc.__class__.__name__}: {exc}); trying the previous one")
            continue
        verdict = deep.result()
        if not verdict.ok:
            _warn(f"checkpoint {iteration} is not whole ({verdict.detail}); trying the previous one")
            continue
        if iteration != tracked:
            _warn(f"resuming from iteration {iteration}, not the tracker's {tracked}")
            if repair:
                write_tracker(load_dir, iteration)
        return iteration, state
    raise UserError.one(
        "--load",
        f"no loadable checkpoint in {load_dir} (tried iterations {candidates})",
        "the checkpoints are corrupt or missing; point --load elsewhere or move them away",
    )


class _Background(threading.Thread):
    """A call in a thread of its own; `result()` waits for it (and raises what it raised)."""

    def __init__(self, fn, *args):
        super().__init__(name="checkpoint-verify", daemon=True)
        self.fn, self.args, self.value, self.error = fn, args, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # given to the caller
            self.error = exc

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


class AsyncSaver:
    """Save in the background: training is held only while the state is copied, and only where it
    would change it. `save` returns at once; the copy runs beside the next step's forward and
    backward passes (which read the weights, never write them), and `before_update` (called before
    the optimizer step) waits for it to end. Then the copy is written and committed. The copy goes
    into the previous save's copy when the shapes still match: memory that is already there copies
    several times faster than memory that must first be mapped.

    `blocked_seconds` is what the last save cost training (the call, and any wait in
    `before_update`): what goodput and `save_interval: auto` count, not the whole write."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._snapshot = None
        self._copied: threading.Event | None = None
        self.last_seconds = 0.0
        self.blocked_seconds = 0.0

    def save(self, save_dir, iteration: int, state: dict, keep_last: int | None, on_done=None) -> None:
        import torch

        called = time.monotonic()
        self.wait()  # the previous write is done with its copy: it may be reused
        copied = self._copied = threading.Event()

        def work():
            try:
                try:
                    snapshot = self._snapshot = _copy(state, self._snapshot, torch)
                finally:
                    copied.set()
                self.last_seconds = save(save_dir, iteration, snapshot, keep_last)
                if on_done:
                    on_done(iteration, self.last_seconds, self.blocked_seconds)
            except BaseException as exc:  # surfaced by wait() in the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name=f"save-iter-{iteration}", daemon=False)
        self._thread.start()
        self.blocked_seconds = time.monotonic() - called

    def before_update(self) -> None:
        """Wait for the copy of the state being saved (call before changing the weights or the
        optimizer's state)."""
        if self._copied is not None:
            waited = time.monotonic()
            self._copied.wait()
            self.blocked_seconds += time.monotonic() - waited
            self._copied = None

    def wait(self) -> None:
        self.before_update()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _copy(obj, into, torch):
    """A copy of `obj` (tensors copied, on their device), reusing the tensors of `into`, an
    earlier copy, where shape, dtype and device agree."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        if (
            isinstance(into, torch.Tensor)
            and into.shape == obj.shape
            and into.dtype == obj.dtype
            and into.device == obj.device
        ):
            return into.copy_(obj)
        return obj.clone()
    if isinstance(obj, dict):
        into = into if isinstance(into, dict) else {}
        return {k: _copy(v, into.get(k), torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        into = into if isinstance(into, (list, tuple)) and len(into) == len(obj) else [None] * len(obj)
        return type(obj)(_copy(v, old, torch) for v, old in zip(obj, into))
    return obj
