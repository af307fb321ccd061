"""How long the phases of this run have taken so far, from its own record: start-up (from a
start to its first logged iteration), a step (from one logged iteration to the next), a
checkpoint save. The hang budgets (launch/watchdog.py) are learned from these, and since they
live in the run directory they are kept across requeues."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpc_mm.run.rundir import RunDir


@dataclass(frozen=True)
class Durations:
    startup: list[float]
    step: list[float]
    checkpoint: list[float]


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def durations(run: RunDir) -> Durations:
    rows = [r for r in run.metrics() if r.time is not None]
    starts = sorted(s.began for s in run.starts() if s.began is not None)
    startup = []
    for start in starts:
        first = next((r.time for r in rows if r.time >= start), None)
        if first is not None:
            startup.append(first - start)
    steps = []
    for before, after in zip(rows, rows[1:]):
        crossed = any(before.time < s <= after.time for s in starts)  # a restart lies between them
        if not crossed and after.iteration > before.iteration and after.time >= before.time:
            steps.append(after.time - before.time)
    saves = [e.save_seconds for e in run.events() if e.save_seconds]
    return Durations(startup, steps, saves)
