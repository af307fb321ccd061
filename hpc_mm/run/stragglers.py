"""Stragglers: a rank slower than the others slows every rank of a synchronous job, and the job's
step time does not say which. Each rank's own compute time per step (before it waits for the others
in the gradient all-reduce: `Metric.rank_seconds`, written by the built-in trainer) does.

The rule, a pure function of the rows (`Detector.feed`): a rank's median compute time over the
measured ones of the last `window` steps (at least half of them; a step in which another process
took the rank's CPU is not measured: its time says nothing of the rank), against the median of the
other ranks' medians; above it by more than `threshold` for `steps` steps in a row, the rank is named,
once a start. A rank named stays named until the start ends (a restart inside may leave its node out:
`fault.straggler_exclude`).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Straggler:
    rank: int
    iteration: int  # the step it was named at
    ratio: float  # its median compute time over the ranks' median
    seconds: float  # its median compute time per step
    typical: float  # the other ranks' median


@dataclass
class Detector:
    threshold: float = 0.3
    window: int = 10
    steps: int = 8
    _times: dict[int, deque] = field(default_factory=dict)
    _slow_for: dict[int, int] = field(default_factory=dict)
    _fed: int = 0  # steps fed
    named: dict[int, Straggler] = field(default_factory=dict)

    def feed(self, iteration: int, rank_seconds: tuple[float | None, ...] | list[float | None]) -> list[Straggler]:
        """One step's compute times, rank by rank (None: not measured); the ranks named at this step."""
        if len(rank_seconds) < 2:
            return []
        for rank, seconds in enumerate(rank_seconds):
            times = self._times.setdefault(rank, deque())
            if seconds is not None:
                times.append((iteration, seconds))
            while times and times[0][0] <= iteration - self.window:  # the last `window` steps only: an
                times.popleft()  # unmeasured step ages the window too (old slow steps do not linger)
        self._fed += 1
        if self._fed < self.window or any(len(t) < (self.window + 1) // 2 for t in self._times.values()):
            return []
        medians = {rank: statistics.median(v for _, v in t) for rank, t in self._times.items()}
        new = []
        for rank, median in medians.items():
            typical = statistics.median(m for other, m in medians.items() if other != rank)
            slow = typical > 0 and median > (1 + self.threshold) * typical
            self._slow_for[rank] = self._slow_for.get(rank, 0) + 1 if slow else 0
            if slow and self._slow_for[rank] >= self.steps and rank not in self.named:
                self.named[rank] = Straggler(rank, iteration, round(median / typical, 3), median, typical)
                new.append(self.named[rank])
        return new


def describe(s: Straggler, host: str | None) -> str:
    where = f" on {host}" if host else ""
    return (
        f"rank {s.rank}{where} is a straggler: its steps take {s.ratio:.2f}x the others' "
        f"({s.seconds * 1000:.0f} ms against {s.typical * 1000:.0f} ms of compute, at iteration {s.iteration})"
    )
