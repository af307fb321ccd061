"""A run's life as intervals of time, from its record: queued, starting, running, saving,
stopped; its restarts; and its goodput (useful training time over the time it held nodes).

Useful training time counts each iteration once, in the start that kept it: iterations done
after the last checkpoint of a start that was stopped are done again by the next start, and
that time is lost. The time a job waits in the queue is not held time (goodput is about the
nodes a job holds), but start-up, saving and redone iterations are.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from hpc_mm.run.events import AGAIN, Kind
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir, Start


@dataclass(frozen=True)
class Interval:
    state: str  # "queued", "starting", "running", "saving", "stopped"
    start: float
    end: float
    number: int  # the start it belongs to, counted across the run directory


@dataclass
class Timeline:
    intervals: list[Interval] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)  # {"start", "job_id", "time", "iteration", "cause"}
    useful_seconds: float = 0.0
    held_seconds: float = 0.0

    @property
    def goodput(self) -> float | None:
        return self.useful_seconds / self.held_seconds if self.held_seconds > 0 else None


def step_seconds(rows: list[Metric]) -> float | None:
    """The typical time of one iteration lately (for ETAs), from the last rows' timestamps."""
    recent = rows[-30:]
    reported = [r.step_ms for r in recent if r.step_ms]
    if reported:  # the entry's own "elapsed time per iteration"
        return statistics.median(reported) / 1000.0
    gaps = [
        (b.time - a.time) / (b.iteration - a.iteration)
        for a, b in zip(recent, recent[1:])
        if b.iteration > a.iteration and b.time and a.time and b.time >= a.time
    ]
    return statistics.median(gaps) if gaps else None


def build(run: RunDir, now: float) -> Timeline:
    rows = [r for r in run.metrics() if r.time is not None]
    line = Timeline()
    starts = [s for s in run.starts() if s.began is not None]
    waiting_since = None
    previous = None
    for start in starts:
        began = start.began
        if start.submitted is not None:  # a job of its own was submitted for this start: it waited from then
            waiting_since = start.submitted.time
        # Held from the batch script's start (its preflight and setup are the job's time too).
        batch = start.started.get("batch_started_at")
        earliest = waiting_since if waiting_since is not None else float("-inf")
        held_from = batch if isinstance(batch, (int, float)) and earliest <= batch <= began else began
        if previous is not None and previous.end is not None and previous.end.kind is Kind.RESTARTED:
            # restarted inside the allocation: the nodes were held all along (no queue)
            held_from, waiting_since = min(previous.end.time, began), None
        ended = start.end.time if start.end and start.end.time >= began else None
        following = next((s.began for s in starts if s.began > began), None)
        end = ended or following or now
        if waiting_since is not None and waiting_since < held_from:
            line.intervals.append(Interval("queued", waiting_since, held_from, start.number))
        mine = [r for r in rows if began <= r.time <= end]
        first = mine[0].time if mine else end
        line.intervals.append(Interval("starting", held_from, first, start.number))
        saves = sorted(
            (e.time - (e.save_seconds or 0.0), e.time) for e in start.all(Kind.CHECKPOINT) if began <= e.time <= end
        )
        cursor = first
        for save_start, save_end in saves:
            if save_start > cursor:
                line.intervals.append(Interval("running", cursor, save_start, start.number))
            line.intervals.append(Interval("saving", max(save_start, cursor), save_end, start.number))
            cursor = max(cursor, save_end)
        if end > cursor:
            line.intervals.append(
                Interval("running" if ended is None or cursor >= end - 1 else "stopped", cursor, end, start.number)
            )
        line.held_seconds += end - held_from
        waiting_since = ended
        if previous is not None:
            resumed = start.first(Kind.RESUMED)
            line.restarts.append(
                {
                    "start": start.number,
                    "job_id": start.job_id,
                    "time": began,
                    "cause": _why_again(previous),
                    "iteration": resumed.iteration if resumed else start.started.get("checkpoint"),
                    "lost": _lost(previous),
                }
            )
        previous = start
    line.useful_seconds = _useful(rows, [s.began for s in starts])
    return line


def restarts(starts: list[Start]) -> tuple[int, str | None]:
    """How many times the run started again after its first start, and why the last time (the
    cause of the requeue before it, or `resubmitted`); a start that ended requeued counts the next
    one already (it waits in the queue, or is on its way)."""
    began = [s for s in starts if s.began is not None]
    count, cause = max(0, len(began) - 1), _why_again(began[-2]) if len(began) > 1 else None
    newest = began[-1] if began else None  # (a later start may have only its hold released so far)
    if newest is not None and newest.end and newest.end.kind in AGAIN:
        count, cause = count + 1, _why_again(newest)
    return count, cause


def _lost(start: Start) -> int:
    value = start.end.get("lost_iterations") if start.end else None
    return value if isinstance(value, int) else 0


def lost_iterations(starts: list[Start]) -> int:
    """Iterations trained past the last checkpoint by starts that were stopped (done again by the next
    start): what an entry that cannot save on a stop signal loses at each preemption, and any entry
    at a crash."""
    return sum(_lost(s) for s in starts)


def _why_again(previous: Start) -> str:
    """Why the run started again after `previous`: the cause of its requeue, or a new submission."""
    end = previous.end
    if end is not None and end.kind in AGAIN:
        return end.cause or end.kind.value
    return "resubmitted"


def _useful(rows: list[Metric], start_times: list[float]) -> float:
    """The time of the iterations that survived: each logged stretch of iterations counts once,
    its last run replacing a lost one (redone after a resume), and only within one start."""
    kept: dict[int, float] = {}
    for before, after in zip(rows, rows[1:]):
        crossed = any(before.time < s <= after.time for s in start_times)
        if not crossed and after.iteration > before.iteration and after.time >= before.time:
            kept[after.iteration] = after.time - before.time
    return sum(kept.values())
