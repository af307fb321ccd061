"""Hang detection: every node's launcher writes a heartbeat, node 0's decides.

Each launcher writes `heartbeats/<job>-r<restart>-n<node>.json` every HEARTBEAT seconds: what its
ranks last logged (launch/progress.py) and each rank's process state. Node 0's launcher reads
them all: when the job as a whole has not moved for longer than the budget of the phase it is
in (start-up, a step, a checkpoint save), it is hung. Budgets are `max(k x p99, floor)` of the
phase's durations in this run so far (run/history.py; `fault.hang_*` in the job file).

What counts as progress depends on the entry (its contract's `watch`, shown by `validate`):
  iterations  Megatron's and the FSDP2 trainer's iteration and checkpoint lines: phases start-up,
              step and checkpoint, each with its budget;
  pattern     those, and lines matching the job's `fault.progress_pattern`;
  liveness    an entry whose progress hpc-mm cannot read (an inference, verl, accelerate, a
              command): it is alive while it writes output, uses CPU time or touches
              $HPC_MM_PROGRESS_FILE, and hung only when none of them moved for the largest budget
              (a stopped or deadlocked process). A missing progress line never ends it.
A progress bar that advanced, a verl step line and a touch of the progress file count as progress
in every mode.

On a hang node 0 records the `hang` event (phase, how long it stalled, the ranks and nodes that
stopped first: a rank stopped, dead or alone still busy), asks every node to dump its ranks'
Python stacks into the logs (py-spy where installed; the built-in trainer also answers SIGUSR2
with faulthandler), and ends the step; `hpc-mm finish` requeues it with cause `hang`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from hpc_mm.environments.devices import node_name
from hpc_mm.job.spec import Fault
from hpc_mm.launch.procs import kill_tree, ranks_under, work_done
from hpc_mm.launch.sentinel import Sentinel
from hpc_mm.launch.stacks import STUCK_STATES, dump_stacks
from hpc_mm.names import Phase, Watch
from hpc_mm.run import history, notify, stragglers
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import Heartbeat, Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.tensorboard import EventWriter

HEARTBEAT = 2.0  # seconds between heartbeats
DUMP_WAIT = 6.0  # how long node 0 waits for the other nodes' stack dumps
TEARDOWN_SECONDS = 60.0  # the most a finished step's processes may take to exit
STOP_WAIT = 40.0  # the most the launcher waits for its watchdog to finish (a stack dump, a notification)


@dataclass(frozen=True)
class Budgets:
    startup: float
    step: float
    checkpoint: float

    @property
    def liveness(self) -> float:
        """An entry judged by liveness alone gets the largest budget: it may be in any phase."""
        return max(self.startup, self.step, self.checkpoint)

    @property
    def teardown(self) -> float:
        """Training is over and its last checkpoint committed: a rank stuck on its way out (a process
        group never destroyed, a peer that aborted) holds nothing worth waiting a step's budget for."""
        return min(self.step, TEARDOWN_SECONDS)

    def of(self, phase: Phase) -> float:
        return getattr(self, phase.value)

    def collective_timeout_minutes(self) -> int:
        """Collectives time out after the watchdog would have ended the step: it, not a 30-minute
        backend timeout, decides."""
        return max(1, math.ceil(2 * max(self.startup, self.step, self.checkpoint) / 60))


def floors(fault: Fault) -> Budgets:
    """The budgets of a run that has measured nothing yet."""
    return Budgets(float(fault.hang_floor_startup), float(fault.hang_floor_step), float(fault.hang_floor_checkpoint))


def budgets(fault: Fault, run: RunDir) -> Budgets:
    seen = history.durations(run)

    def budget(values, floor):
        observed = history.p99(values)
        return max(fault.hang_factor * observed, floor) if observed is not None else float(floor)

    return Budgets(
        budget(seen.startup, fault.hang_floor_startup),
        budget(seen.step, fault.hang_floor_step),
        budget(seen.checkpoint, fault.hang_floor_checkpoint),
    )


def describe(fault: Fault, watch: Watch, limits: Budgets) -> str:
    """What the watchdog will count as progress for a job, and the budget it starts with (validate)."""
    if not fault.hang_detection:
        return "off (fault.hang_detection: false)"
    phases = f"start-up {limits.startup:.0f} s, step {limits.step:.0f} s, checkpoint {limits.checkpoint:.0f} s"
    if watch is Watch.ITERATIONS:
        return f"the entry's iteration and checkpoint lines; budgets {phases}"
    if watch is Watch.PATTERN:
        return f"lines matching fault.progress_pattern {fault.progress_pattern!r} and iteration lines; budgets {phases}"
    return (
        f"liveness only (output, CPU time or $HPC_MM_PROGRESS_FILE moving; no progress line is needed); "
        f"budget {limits.liveness:.0f} s (set fault.progress_pattern to watch a line of its own)"
    )


def collective_timeout(fault: Fault, run: RunDir) -> int | None:
    """Megatron's collective timeout as the launcher passes it: the job's own; else, with hang
    detection on, just above the hang budget (the watchdog, not a backend timeout, ends a hung
    step); else none (Megatron's default)."""
    if fault.collective_timeout_minutes:
        return fault.collective_timeout_minutes
    return budgets(fault, run).collective_timeout_minutes() if fault.hang_detection else None


def blame(beats: list[Heartbeat], stalled_since_cpu: dict[int, float], stalled: float) -> list[dict]:
    """The ranks that stopped first: stopped or dead processes; else the ranks still busy while
    the others wait in a collective; else nobody in particular."""
    ranks = [{**r, "host": b.host, "node": b.node} for b in beats for r in b.ranks]
    stuck = [{**r, "why": STUCK_STATES[r["state"]]} for r in ranks if r["state"] in STUCK_STATES]
    if stuck:
        return stuck
    busy = [
        {**r, "why": f"still busy ({r['cpu'] - stalled_since_cpu[r['rank']]:.0f} s of CPU) while the others wait"}
        for r in ranks
        if r["rank"] in stalled_since_cpu and r["cpu"] - stalled_since_cpu[r["rank"]] > 0.5 * stalled
    ]
    return busy if busy and len(busy) < len(ranks) else []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def new_rows(path: Path, offset: int) -> tuple[list[Metric], int]:
    """The whole metrics rows written to `path` after byte `offset`, and where they end."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    whole = data[: data.rfind(b"\n") + 1]
    rows = []
    for line in whole.splitlines():
        try:
            row = Metric.from_json(json.loads(line))
        except ValueError:
            continue
        if row is not None:
            rows.append(row)
    return rows, offset + len(whole)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class Watchdog(threading.Thread):
    """Heartbeats for one launcher; on node 0 (`decides`), the hang decision."""

    def __init__(
        self,
        run: RunDir,
        start: StartKey,
        node: int,
        progress,
        child,
        decides: bool,
        budgets: Budgets,
        builtin: bool,
        enabled: bool = True,
        task: int | None = None,
        watch: Watch = Watch.ITERATIONS,
        tell: Iterable[Kind] = (),
        detector: stragglers.Detector | None = None,
        sentinel: Sentinel | None = None,
        board: EventWriter | None = None,
    ):
        super().__init__(name="watchdog", daemon=True)
        self.rundir, self.start_key, self.node, self.progress, self.child = run, start, node, progress, child
        self.file = run.heartbeat_file(start, node, task)  # task: srun started this rank alone
        self.touched = run.progress_file(start, node, task)  # $HPC_MM_PROGRESS_FILE
        self.marker = run.hang_marker(start)
        self.decides, self.budgets, self.builtin, self.enabled = decides, budgets, builtin, enabled
        self.watch = watch
        self.host = node_name(os.environ)  # Slurm's name for the node (several may share a host)
        self.dumped = False
        self.hung: dict | None = None
        self._halt = threading.Event()
        self._cpu_history: list[tuple[float, dict[int, float]]] = []
        self._work: float | None = None  # CPU seconds of the training processes at the last beat
        self._alive = time.time()  # when they last used CPU time
        self._touched_at = _mtime(self.touched)
        self.tell = set(tell)  # the events of a running start `notify:` picked (started, checkpoint)
        self._told = 0
        self.detector = detector  # node 0: each rank's compute time per step, from the metrics rows
        self._metrics_at = _size(run.metrics_file)  # this start's rows only
        self.sentinel = sentinel  # the checks at each checkpoint (launch/sentinel.py)
        self.board = board  # node 0: the metrics rows as TensorBoard events, for entries that write none
        self.leaving = None  # the `leaving` event node 0 recorded

    def phase(self) -> Phase:
        if self.watch is Watch.LIVENESS:
            return Phase.LIVENESS
        if self.progress.saving:
            return Phase.CHECKPOINT
        p = self.progress
        if p.iteration is not None and p.train_iters and p.iteration >= p.train_iters and p.final_saved:
            return Phase.TEARDOWN
        moved = self.progress.iteration is not None or (self.watch is Watch.PATTERN and self.progress.steps)
        return Phase.STEP if moved else Phase.STARTUP

    def last_progress(self) -> float:
        """When this launcher last saw the entry move on, by the entry's watch."""
        now, touched = time.time(), _mtime(self.touched)
        if touched is not None and touched != self._touched_at:
            self._touched_at = touched
            self.progress.last_progress = max(self.progress.last_progress, min(touched, now))
        if self.watch is not Watch.LIVENESS:
            return self.progress.last_progress
        work, stopped = work_done(self.child.pid)
        if not stopped and work != self._work:
            self._alive = now
        self._work = work
        return max(self.progress.last_progress, self.progress.last_output, self._alive)

    def beat(self, ended: bool = False) -> Heartbeat:
        beat = Heartbeat(
            node=self.node,
            host=self.host,
            pid=os.getpid(),
            time=round(time.time(), 3),
            iteration=self.progress.iteration,
            last_progress=round(self.last_progress(), 3),
            phase=self.phase().value,
            ranks=tuple(ranks_under(self.child.pid)) if not ended else (),
            dumped=self.dumped,
            ended=ended,
            health=self.sentinel.problems if self.sentinel else (),
        )
        self.rundir.write_heartbeat(self.file, beat)
        return beat

    def run(self) -> None:
        while not self._halt.wait(HEARTBEAT):
            try:
                moved = self.sentinel is not None and self.sentinel.poll()
                self.beat()
                if self.decides and self.sentinel is not None and self.leaving is None and self.hung is None:
                    self._leave(moved)
                if self.marker.exists() and not self.dumped:
                    dump_stacks(ranks_under(self.child.pid), self.builtin)
                    self.dumped = True
                    self.beat()
                    if not self.decides:  # node 0 declared the step hung: end this node's part of it too
                        kill_tree(self.child.pid)
                if self.decides and self.enabled and self.hung is None and self.leaving is None:
                    self._decide()
                if self.decides and (self.detector is not None or self.board is not None):
                    self._rows()
                if self.decides and self.tell:
                    self._tell()
            except Exception as exc:  # the watchdog must never take the training down
                sys.stderr.write(f"hpc-mm watchdog: {exc.__class__.__name__}: {exc}\n")

    def _leave(self, moved: bool) -> None:
        """Node 0: leave the nodes the last checkpoint's checks found sick or drained, ending the step
        right after that checkpoint (finish starts it again without them)."""
        beats = [b for b in self.rundir.heartbeats(self.start_key) if not b.ended]
        event = self.sentinel.leave(self.rundir, self.start_key, beats, self.host, moved)
        if event is None:
            return
        self.leaving = event
        kill_tree(self.child.pid)
        if Kind.LEAVING in self.tell:
            notify.deliver(self.rundir, [event])

    def _rows(self) -> None:
        """This start's new metrics rows: into the run's TensorBoard events, to the straggler detector."""
        rows, self._metrics_at = new_rows(self.rundir.metrics_file, self._metrics_at)
        if self.board is not None:
            self.board.write(rows)
        if self.detector is not None:
            self._stragglers(rows)

    def _stragglers(self, rows: list[Metric]) -> None:
        """Feed metrics rows to the straggler detector; name whom it finds."""
        steps = [
            (row.iteration - len(row.rank_seconds) + 1 + i, times)
            for row in rows
            if row.rank_seconds
            for i, times in enumerate(row.rank_seconds)
        ]
        for iteration, times in steps:
            for found in self.detector.feed(iteration, times):
                host = next((b.host for b in self.rundir.heartbeats(self.start_key) for r in b.ranks
                             if r.get("rank") == found.rank), None)  # fmt: skip
                said = stragglers.describe(found, host)
                sys.stderr.write(f"hpc-mm watchdog: {said}\n")
                event = self.rundir.record(
                    Kind.STRAGGLER,
                    self.start_key,
                    rank=found.rank,
                    nodes=[host] if host else [],
                    iteration=found.iteration,
                    ratio=found.ratio,
                    seconds=round(found.seconds, 4),
                    typical=round(found.typical, 4),
                    reason=said,
                )
                if Kind.STRAGGLER in self.tell:
                    notify.deliver(self.rundir, [event])

    def _tell(self) -> None:
        """Deliver the events of this start `notify:` picked that happen while it runs (its start,
        each checkpoint), whoever recorded them (the launcher, the entry's log, the built-in trainer)."""
        events = self.rundir.reread().events()
        new = [e for e in events[self._told :] if e.key == self.start_key and e.kind in self.tell - {Kind.STRAGGLER}]
        self._told = len(events)
        if new:
            notify.deliver(self.rundir, new)

    def stop(self) -> None:
        """End the heartbeats, once whatever the thread is doing is done: after a hang it is telling
        `notify:` (the launcher exits right after this, and a daemon thread would die with it)."""
        self._halt.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(STOP_WAIT)
        if self.decides and self.board is not None:
            try:
                self.board.write(new_rows(self.rundir.metrics_file, self._metrics_at)[0])  # the last rows
            except OSError:
                pass
        try:
            self.beat(ended=True)
        except OSError:
            pass

    def _decide(self) -> None:
        beats = self.rundir.heartbeats(self.start_key)
        now = time.time()
        self._cpu_history.append((now, {r["rank"]: r["cpu"] for b in beats for r in b.ranks}))
        last = max([b.last_progress for b in beats] + [self.progress.last_progress])
        phases = {b.phase for b in beats} | {self.phase().value}
        order = (Phase.LIVENESS, Phase.CHECKPOINT, Phase.STEP, Phase.TEARDOWN)
        phase = next((p for p in order if p.value in phases), Phase.STARTUP)
        budget = self.budgets.of(phase)
        if now - last <= budget:
            return
        at_stall = next((cpu for t, cpu in self._cpu_history if t >= last), self._cpu_history[0][1])
        blamed = blame(beats, at_stall, now - last)
        self.hung = {
            "phase": phase.value,
            "stalled_seconds": round(now - last, 1),
            "budget_seconds": round(budget, 1),
            "iteration": max((b.iteration for b in beats if b.iteration is not None), default=None),
            "blamed": [{k: r[k] for k in ("rank", "host", "node", "state", "why")} for r in blamed],
            "nodes": sorted({r["host"] for r in blamed}),
        }
        hang = self.rundir.record(Kind.HANG, self.start_key, **self.hung)
        who = ", ".join(f"rank {r['rank']} on {r['host']} ({r['why']})" for r in blamed) or "no rank stands out"
        sys.stderr.write(
            f"hpc-mm watchdog: no progress for {now - last:.0f} s in {phase.value} (budget {budget:.0f} s): "
            f"hung; stopped first: {who}; ending the step\n"
        )
        self.rundir.write_heartbeat(self.marker, self.hung)
        dump_stacks(ranks_under(self.child.pid), self.builtin)
        self.dumped = True
        deadline = time.time() + DUMP_WAIT
        while time.time() < deadline and not all(
            b.dumped or b.ended for b in self.rundir.heartbeats(self.start_key) if b.pid != os.getpid()
        ):
            time.sleep(0.5)
        kill_tree(self.child.pid)  # the entry's whole tree; srun then ends the other nodes' tasks
        notify.deliver(self.rundir, [hang])  # once the step is ending: a slow receiver never delays it
