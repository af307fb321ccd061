"""How long a rank's thread waited for another process's turn on a CPU (Linux only; 0 elsewhere).

The scheduler's run delay (/proc/thread-self/schedstat) is the time a thread was ready to run but
not running. It has two causes that the straggler detection must tell apart: other processes had the
node's CPUs (a loaded node slows its ranks by turns: that says nothing of the rank), or a CPU quota
throttled the rank's cgroup (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`): that slows the rank itself,
like a slower CPU, and must count as its own time. So the contention is the run delay less the time
the rank's cgroup, or a cgroup above it, was throttled.

Which cgroups hold a quota is read again on `refresh()` (the trainer calls it every few steps: a rank
may be moved into a limited cgroup, or a quota set, while it trains); in between, only their cpu.stat
files are read, and none where no quota is set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
_SCHEDSTAT = "thread-self/schedstat"


@dataclass(frozen=True)
class Source:
    """One cgroup whose CPU quota can throttle this process: its cpu.stat and the counter to read."""

    stat: Path
    key: str  # throttled_time (v1, nanoseconds) or throttled_usec (v2, microseconds)
    unit: float  # seconds per count


class Mark(NamedTuple):
    run_delay: float  # seconds
    throttled: dict[Path, float] = {}  # seconds, cgroup by cgroup (never changed in place)


def _mounts(proc: Path) -> dict[str, tuple[Path, str]]:
    """Controller ("cpu", or "" for the unified v2 hierarchy) -> (mount point, the mount's root)."""
    found: dict[str, tuple[Path, str]] = {}
    try:
        lines = (proc / "self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        ours, _, theirs = line.partition(" - ")
        fields, tail = ours.split(), theirs.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = fields[3], Path(fields[4]), tail[0]
        if fstype == "cgroup2":
            found.setdefault("", (point, root))
        elif fstype == "cgroup" and "cpu" in tail[2].split(","):
            found.setdefault("cpu", (point, root))
    return found


def throttle_sources(proc: Path = PROC) -> tuple[Source, ...]:
    """The cgroups (this process's and those above it) that hold a CPU quota, for the cpu controller."""
    mounts = _mounts(proc)
    try:
        entries = (proc / "self/cgroup").read_text().splitlines()
    except OSError:
        return ()
    sources: list[Source] = []
    for entry in entries:
        hierarchy, _, rest = entry.partition(":")
        controllers, _, path = rest.partition(":")
        v1 = "cpu" in controllers.split(",")
        if not (v1 or (hierarchy == "0" and not controllers)):
            continue
        mount = mounts.get("cpu" if v1 else "")
        if mount is None:
            continue
        point, root = mount
        if root != "/" and path.startswith(root):
            path = path[len(root) :]
        folder = point / path.lstrip("/")
        while True:
            quota = folder / ("cpu.cfs_quota_us" if v1 else "cpu.max")
            try:
                limited = quota.read_text().split()[0] not in ("-1", "max")
            except (OSError, IndexError):
                limited = False
            if limited:
                key, unit = ("throttled_time", 1e-9) if v1 else ("throttled_usec", 1e-6)
                sources.append(Source(folder / "cpu.stat", key, unit))
            if folder == point or point not in folder.parents:
                break
            folder = folder.parent
    return tuple(sources)


class _Reader:
    """A /proc or cgroup file kept open and read again from its start: a read costs a couple of
    microseconds, where a path's walk and an open cost tens (they run around every micro-batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> bytes | None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(self._fd, 4096, 0)
        except OSError:
            self.close()
            return None

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _counter(data: bytes | None, key: bytes) -> int | None:
    """The value of `key` ("name ") in a cpu.stat ("name value" lines)."""
    if not data:
        return None
    if data.startswith(key):
        at = len(key)
    else:
        at = data.find(b"\n" + key)
        if at < 0:
            return None
        at += 1 + len(key)
    end = data.find(b"\n", at)
    try:
        return int(data[at : end if end >= 0 else None])
    except ValueError:
        return None


class CpuWait:
    """`mark()` before and after a stretch of a rank's own work; `contended(before, after)` is the
    time in between that it waited for other processes' turns (never for its own quota). The files
    are opened by the thread that first marks (the trainer's main thread: thread-self is it)."""

    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self.sources: tuple[Source, ...] = ()
        self._schedstat = _Reader(proc / _SCHEDSTAT)
        self._stats: list[tuple[Source, _Reader, bytes]] = []
        self.refresh()

    def refresh(self) -> None:
        sources = throttle_sources(self.proc)
        if sources != self.sources:
            for _, reader, _ in self._stats:
                reader.close()
            self.sources = sources
            self._stats = [(s, _Reader(s.stat), s.key.encode() + b" ") for s in sources]

    def mark(self) -> Mark:
        data = self._schedstat.read()
        try:
            delay = int(data.split()[1]) / 1e9 if data else 0.0
        except (IndexError, ValueError):
            delay = 0.0
        if not self._stats:
            return Mark(delay)
        throttled = {}
        for source, reader, key in self._stats:
            count = _counter(reader.read(), key)
            if count is not None:
                throttled[source.stat] = count * source.unit
        return Mark(delay, throttled)

    @staticmethod
    def contended(before: Mark, after: Mark) -> float:
        waited = max(0.0, after.run_delay - before.run_delay)
        throttled = max(
            (after.throttled[p] - before.throttled[p] for p in after.throttled.keys() & before.throttled.keys()),
            default=0.0,
        )
        return max(0.0, waited - max(0.0, throttled))


class OwnTime:
    """A rank's own time in one step: the wall time of the stretches of its own work (`begin()` ..
    `end()`: not its waits for data or for the other ranks' collectives), less its waits for other
    processes' turns on a CPU in them (`delayed`). Without a CpuWait, nothing is timed."""

    def __init__(self, wait: CpuWait | None) -> None:
        self.wait = wait
        self.seconds = 0.0
        self.delayed = 0.0
        self._began: tuple[float, Mark] | None = None

    def reset(self) -> None:
        self.seconds = self.delayed = 0.0
        self._began = None

    def refresh(self) -> None:
        if self.wait is not None:
            self.wait.refresh()

    def begin(self) -> None:
        if self.wait is not None:
            self._began = (time.perf_counter(), self.wait.mark())

    def end(self) -> None:
        if self._began is None or self.wait is None:
            return
        began, before = self._began
        delay = self.wait.contended(before, self.wait.mark())
        self.seconds += max(0.0, time.perf_counter() - began - delay)
        self.delayed += delay
        self._began = None
