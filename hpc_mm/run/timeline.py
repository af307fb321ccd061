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
from pathlib import Path

from hpc_mm.run import events, metrics


@dataclass(frozen=True)
class Interval:
    state: str  # "queued", "starting", "running", "saving", "stopped"
    start: float
    end: float
    restart: int


@dataclass
class Timeline:
    intervals: list[Interval] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)  # {"restart", "time", "iteration", "cause"}
    useful_seconds: float = 0.0
    held_seconds: float = 0.0

    @property
    def goodput(self) -> float | None:
        return self.useful_seconds / self.held_seconds if self.held_seconds > 0 else None


def step_seconds(rows: list[dict]) -> float | None:
    """The typical time of one iteration lately (for ETAs), from the last rows' timestamps."""
    recent = rows[-30:]
    gaps = [(b["time"] - a["time"]) / (b["iteration"] - a["iteration"]) for a, b in zip(recent, recent[1:])
            if b["iteration"] > a["iteration"] and b.get("time") and a.get("time") and b["time"] >= a["time"]]
    return statistics.median(gaps) if gaps else None


def build(run_dir: Path, now: float) -> Timeline:
    record = events.read(run_dir)
    rows = [r for r in metrics.rows(run_dir) if isinstance(r.get("time"), (int, float))]
    line = Timeline()
    starts = [e for e in record if e["event"] == "started"]
    waiting_since = next((e["time"] for e in record if e["event"] == "submitted"), None)
    for index, start in enumerate(starts):
        restart, began = start.get("restart", 0), start["time"]
        # Held from the batch script's start (its preflight and setup are the job's time too).
        batch = start.get("batch_started_at")
        earliest = waiting_since if waiting_since is not None else float("-inf")
        held_from = batch if isinstance(batch, (int, float)) and earliest <= batch <= began else began
        ended = next((e["time"] for e in record if e.get("restart") == restart and e["event"] in events.TERMINAL
                      and e["time"] >= began), None)
        following = starts[index + 1]["time"] if index + 1 < len(starts) else None
        end = ended or following or now
        if waiting_since is not None and waiting_since < held_from:
            line.intervals.append(Interval("queued", waiting_since, held_from, restart))
        mine = [r for r in rows if began <= r["time"] <= end]
        first = mine[0]["time"] if mine else end
        line.intervals.append(Interval("starting", held_from, first, restart))
        saves = sorted((e["time"] - float(e.get("seconds") or 0), e["time"]) for e in record
                       if e["event"] == "checkpoint" and began <= e["time"] <= end)
        cursor = first
        for save_start, save_end in saves:
            if save_start > cursor:
                line.intervals.append(Interval("running", cursor, save_start, restart))
            line.intervals.append(Interval("saving", max(save_start, cursor), save_end, restart))
            cursor = max(cursor, save_end)
        if end > cursor:
            line.intervals.append(Interval("running" if ended is None else "stopped" if cursor < end - 1 else "running",
                                           cursor, end, restart))
        line.held_seconds += end - held_from
        waiting_since = ended
        resumed = next((e for e in record if e["event"] == "resumed" and e.get("restart") == restart), None)
        if restart > 0:
            cause = next((e.get("cause") for e in record if e["event"] == "requeued" and e.get("restart") == restart - 1),
                         None)
            line.restarts.append({"restart": restart, "time": began, "cause": cause,
                                  "iteration": resumed.get("iteration") if resumed else start.get("checkpoint")})
    line.useful_seconds = _useful(rows, [s["time"] for s in starts])
    return line


def _useful(rows: list[dict], start_times: list[float]) -> float:
    """The time of the iterations that survived: each logged stretch of iterations counts once,
    its last run replacing a lost one (redone after a resume), and only within one start."""
    kept: dict[int, float] = {}
    for before, after in zip(rows, rows[1:]):
        crossed = any(before["time"] < s <= after["time"] for s in start_times)
        if not crossed and after["iteration"] > before["iteration"] and after["time"] >= before["time"]:
            kept[after["iteration"]] = after["time"] - before["time"]
    return sum(kept.values())
