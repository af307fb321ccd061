"""The processes under a launcher, read from /proc (no psutil on compute nodes): one table of
pid -> (parent, state, CPU seconds), and the walks over it that supervise.py and watchdog.py use."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.launch.standby import stand_in, stand_ins


@dataclass(frozen=True)
class Proc:
    pid: int
    parent: int
    state: str  # R, S, D, T, Z, ... as /proc/<pid>/stat says
    cpu: float  # user + system seconds
    session: int = 0


def table() -> dict[int, Proc]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        pid = int(stat.parent.name)
        out[pid] = Proc(pid, int(fields[1]), fields[0], (int(fields[11]) + int(fields[12])) / tick, int(fields[3]))
    return out


def children_of(procs: dict[int, Proc]) -> dict[int, list[int]]:
    """Each process's children; a standby's client (launch/standby.py) has the standby running its
    process as its child too (the standby's parent is its pool, but what it runs is the client's)."""
    out: dict[int, list[int]] = {}
    for proc in procs.values():
        out.setdefault(proc.parent, []).append(proc.pid)
    for client, real in stand_ins().items():
        if client in procs and real in procs:
            out.setdefault(client, []).append(real)
    return out


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    return children_of(table()).get(pid, [])


def descendants(root: int) -> list[int]:
    """`root` and every process under it (torchrun puts each worker in a session of its own, so a
    process group is not enough to reach them)."""
    kids = children_of(table())
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def kill_tree(root: int) -> None:
    for pid in descendants(root):  # listed first: killed parents' children would move to init
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rank_of(pid: int) -> int | None:
    """The RANK a training process was started with (torchrun and hpc-mm set it)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    value = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
    return int(value) if value and value.isdigit() else None


def ranks_under(root: int) -> list[dict]:
    """The training processes under `root` (torchrun's workers, or the rank itself): the
    descendants that have a RANK, with their state and CPU time."""
    procs = table()
    kids = children_of(procs)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs and (rank := rank_of(pid)) is not None:
            real = stand_in(pid)  # a standby interpreter runs this rank for its client (launch/standby.py)
            if real is not None and real in procs:
                pid = real
            found.append({"rank": rank, "pid": pid, "state": procs[pid].state, "cpu": round(procs[pid].cpu, 2)})
            continue  # a rank's own children (data loader workers) are part of it
        todo += kids.get(pid, [])
    return sorted(found, key=lambda r: r["rank"])


def work_done(root: int) -> tuple[float, bool]:
    """The CPU seconds the training processes under `root` have used (each rank with its own children,
    such as data loader workers; every process under `root` where none has a RANK), and whether all of
    them are stopped (SIGSTOP, a debugger). A launcher's own polling is not work: torchrun's agent
    keeps using CPU while its workers are stopped."""
    procs = table()
    kids = children_of(procs)
    ranks = [r["pid"] for r in ranks_under(root)]
    tops = ranks or [root]
    cpu, states = 0.0, []
    for top in tops:
        todo = [top]
        while todo:
            pid = todo.pop()
            if pid in procs:
                cpu += procs[pid].cpu
                states.append(procs[pid].state)
            todo += kids.get(pid, [])
    return round(cpu, 2), bool(states) and all(s in "Tt" for s in states)


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans under this process (a killed rank's data loader workers) become its children rather
    than init's, so that `kill_descendants` still reaches them. Linux only; False elsewhere."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_descendants() -> int:
    """SIGKILL what the entry left under this process (orphans it adopted as a subreaper included)
    and reap them; the number killed. The entry runs in sessions of its own; what this process
    started itself (a notification's command, py-spy) shares its session and is left alone."""
    me, procs = os.getpid(), table()
    mine = os.getsid(0)
    found = [pid for pid in descendants(me) if pid != me and pid in procs and procs[pid].session != mine]
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in found:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not ours to reap (its own parent, still alive, does it)
    return len(found)
