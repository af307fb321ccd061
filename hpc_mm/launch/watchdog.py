"""Hang detection: every node's launcher writes a heartbeat, node 0's decides.

Each launcher writes `heartbeats/r<restart>-n<node>.json` every HEARTBEAT seconds: what its
ranks last logged (launch/progress.py) and each rank's process state. Node 0's launcher reads
them all: when the job as a whole has not moved for longer than the budget of the phase it is
in (start-up, a step, a checkpoint save), it is hung. Budgets are `max(k x p99, floor)` of the
phase's durations in this run so far (run/history.py; `fault.hang_*` in the job file).

On a hang node 0 records the `hang` event (phase, how long it stalled, the ranks and nodes that
stopped first: a rank stopped, dead or alone still busy), asks every node to dump its ranks'
Python stacks into the logs (py-spy where installed; the built-in trainer also answers SIGUSR2
with faulthandler), and ends the step; `hpc-mm finish` requeues it with cause `hang`.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.job.signals import STACK_SIGNAL
from hpc_mm.job.spec import Fault
from hpc_mm.environments.devices import node_name
from hpc_mm.run import events, heartbeats, history

HEARTBEAT = 2.0  # seconds between heartbeats
DUMP_WAIT = 6.0  # how long node 0 waits for the other nodes' stack dumps
STUCK_STATES = {"T": "stopped", "t": "stopped", "D": "in uninterruptible I/O", "Z": "dead (zombie)", "X": "dead"}


@dataclass(frozen=True)
class Budgets:
    startup: float
    step: float
    checkpoint: float

    def collective_timeout_minutes(self) -> int:
        """Collectives time out after the watchdog would have ended the step: it, not a 30-minute
        backend timeout, decides."""
        return max(1, math.ceil(2 * max(self.startup, self.step, self.checkpoint) / 60))


def budgets(fault: Fault, run_dir: Path) -> Budgets:
    seen = history.durations(run_dir)

    def budget(values, floor):
        observed = history.p99(values)
        return max(fault.hang_factor * observed, floor) if observed is not None else float(floor)

    return Budgets(budget(seen.startup, fault.hang_floor_startup), budget(seen.step, fault.hang_floor_step),
                   budget(seen.checkpoint, fault.hang_floor_checkpoint))


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, state, cpu seconds), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0], (int(fields[11]) + int(fields[12])) / tick)
    return table


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    value = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
    return int(value) if value and value.isdigit() else None


def descendants(root: int) -> list[int]:
    """Every process under `root` (torchrun puts each worker in a session of its own, so a
    process group is not enough to reach them)."""
    table = _proc_table()
    children = _children_of(table)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _children_of(table: dict[int, tuple[int, str, float]]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    return children


def kill_tree(root: int) -> None:
    for pid in descendants(root):  # listed first: killed parents' children would move to init
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ranks_under(root: int) -> list[dict]:
    """The training processes under `root` (torchrun's workers, or the rank itself): the
    descendants that have a RANK, with their state and CPU time."""
    table = _proc_table()
    children = _children_of(table)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table and (rank := _rank_of(pid)) is not None:
            found.append({"rank": rank, "pid": pid, "state": table[pid][1], "cpu": round(table[pid][2], 2)})
            continue  # a rank's own children (data loader workers) are part of it
        todo += children.get(pid, [])
    return sorted(found, key=lambda r: r["rank"])


def blame(beats: list[dict], stalled_since_cpu: dict[int, float], stalled: float) -> list[dict]:
    """The ranks that stopped first: stopped or dead processes; else the ranks still busy while
    the others wait in a collective; else nobody in particular."""
    ranks = [{**r, "host": b.get("host"), "node": b.get("node")} for b in beats for r in b.get("ranks", [])]
    stuck = [{**r, "why": STUCK_STATES[r["state"]]} for r in ranks if r["state"] in STUCK_STATES]
    if stuck:
        return stuck
    busy = [{**r, "why": f"still busy ({r['cpu'] - stalled_since_cpu[r['rank']]:.0f} s of CPU) while the others wait"}
            for r in ranks if r["rank"] in stalled_since_cpu and r["cpu"] - stalled_since_cpu[r["rank"]] > 0.5 * stalled]
    return busy if busy and len(busy) < len(ranks) else []


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


def dump_stacks(ranks: list[dict], builtin: bool) -> None:
    """Every rank's Python stacks into our log: py-spy where installed, else (built-in trainer)
    faulthandler through SIGUSR2, which a stopped process cannot answer."""
    host, spy = node_name(os.environ), _py_spy()
    for r in ranks:
        sys.stderr.write(f"hpc-mm watchdog: Python stacks of rank {r['rank']} (pid {r['pid']}, state {r['state']}) "
                         f"on {host}:\n")
        if spy:
            try:
                out = subprocess.run([spy, "dump", "--nonblocking", "--pid", str(r["pid"])], capture_output=True,
                                     text=True, timeout=20)
                sys.stderr.write(out.stdout or out.stderr)
            except (OSError, subprocess.TimeoutExpired) as exc:
                sys.stderr.write(f"  py-spy failed: {exc}\n")
        elif builtin and r["state"] not in STUCK_STATES:
            try:
                os.kill(r["pid"], STACK_SIGNAL)
            except ProcessLookupError:
                pass
        else:
            sys.stderr.write("  (install py-spy to see the stacks of this entry)\n")
    sys.stderr.flush()


class Watchdog(threading.Thread):
    """Heartbeats for one launcher; on node 0 (`decides`), the hang decision."""

    def __init__(self, run_dir: Path, restart: int, node: int, progress, child, decides: bool, budgets: Budgets,
                 builtin: bool, enabled: bool = True, task: int | None = None):
        super().__init__(name="watchdog", daemon=True)
        self.run_dir, self.restart, self.node, self.progress, self.child = run_dir, restart, node, progress, child
        self.file = heartbeats.path(run_dir, restart, node, task)  # task: srun started this rank alone
        self.decides, self.budgets, self.builtin, self.enabled = decides, budgets, builtin, enabled
        self.host = node_name(os.environ)  # Slurm's name for the node (several may share a host)
        self.dumped = False
        self.hung: dict | None = None
        self._stop = threading.Event()
        self._cpu_history: list[tuple[float, dict[int, float]]] = []

    def phase(self) -> str:
        return "checkpoint" if self.progress.saving else "step" if self.progress.iteration is not None else "startup"

    def beat(self, ended: bool = False) -> dict:
        ranks = ranks_under(self.child.pid) if not ended else []
        beat = {"node": self.node, "host": self.host, "pid": os.getpid(), "time": round(time.time(), 3),
                "iteration": self.progress.iteration, "last_progress": round(self.progress.last_progress, 3),
                "phase": self.phase(), "ranks": ranks, "dumped": self.dumped, "ended": ended}
        heartbeats.write(self.file, beat)
        return beat

    def run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.beat()
                if heartbeats.hang_marker(self.run_dir, self.restart).exists() and not self.dumped:
                    dump_stacks(ranks_under(self.child.pid), self.builtin)
                    self.dumped = True
                    self.beat()
                    if not self.decides:  # node 0 declared the step hung: end this node's part of it too
                        kill_tree(self.child.pid)
                if self.decides and self.enabled and self.hung is None:
                    self._decide()
            except Exception as exc:  # the watchdog must never take the training down
                sys.stderr.write(f"hpc-mm watchdog: {exc.__class__.__name__}: {exc}\n")

    def stop(self) -> None:
        self._stop.set()
        try:
            self.beat(ended=True)
        except OSError:
            pass

    def _decide(self) -> None:
        beats = heartbeats.read(self.run_dir, self.restart)
        now = time.time()
        self._cpu_history.append((now, {r["rank"]: r["cpu"] for b in beats for r in b.get("ranks", [])}))
        last = max([b.get("last_progress", 0) for b in beats] + [self.progress.last_progress])
        phase = ("checkpoint" if any(b.get("phase") == "checkpoint" for b in beats) else
                 "step" if any(b.get("iteration") is not None for b in beats) else "startup")
        budget = getattr(self.budgets, phase)
        if now - last <= budget:
            return
        at_stall = next((cpu for t, cpu in self._cpu_history if t >= last), self._cpu_history[0][1])
        blamed = blame(beats, at_stall, now - last)
        self.hung = {"phase": phase, "stalled_seconds": round(now - last, 1), "budget_seconds": round(budget, 1),
                     "iteration": max((b["iteration"] for b in beats if b.get("iteration") is not None), default=None),
                     "blamed": [{k: r[k] for k in ("rank", "host", "node", "state", "why")} for r in blamed],
                     "nodes": sorted({r["host"] for r in blamed})}
        events.record(self.run_dir, "hang", **self.hung)
        who = ", ".join(f"rank {r['rank']} on {r['host']} ({r['why']})" for r in blamed) or "no rank stands out"
        sys.stderr.write(f"hpc-mm watchdog: no progress for {now - last:.0f} s in {phase} (budget {budget:.0f} s): "
                         f"hung; stopped first: {who}; ending the step\n")
        heartbeats.write(heartbeats.hang_marker(self.run_dir, self.restart), self.hung)
        dump_stacks(ranks_under(self.child.pid), self.builtin)
        self.dumped = True
        deadline = time.time() + DUMP_WAIT
        while time.time() < deadline and not all(b.get("dumped") or b.get("ended")
                                                  for b in heartbeats.read(self.run_dir, self.restart)
                                                  if b.get("pid") != os.getpid()):
            time.sleep(0.5)
        kill_tree(self.child.pid)  # the entry's whole tree; srun then ends the other nodes' tasks
