"""`checkpoint.save_interval: auto`: the interval, chosen from measurements instead of a constant.

Young/Daly: with a save that takes S seconds and an interruption every M seconds on average, the
interval that loses the least time (saves plus work redone) is about sqrt(2 S M). S is the run's
measured save time (its `checkpoint` events), M the declared `fault.mtbf_hours`, else what this run
has seen (held time over interruptions), else a day. The interval becomes iterations through the
run's measured step time; before there is one, the first start uses `FIRST_START` iterations.
For an entry that cannot save on a stop signal, a preemption loses the work since the last save:
where the partition preempts with a grace time, the interval is kept within that grace time.
It is chosen again at every start (the measurements grow) and recorded with its inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_mm.names import Cause
from hpc_mm.run.events import AGAIN
from hpc_mm.run.rundir import RunDir

AUTO = "auto"
FIRST_START = 100  # iterations, until the run has a measured step time
ASSUMED_SAVE_SECONDS = 60.0
ASSUMED_MTBF_SECONDS = 24 * 3600.0
# What interrupts a run: a preemption, a crash, a hang, a dead node, a failed preflight (not a
# planned end: the time limit, a cancel, a completion).
INTERRUPTIONS = (
    Cause.PREEMPTION,
    Cause.CRASH,
    Cause.HANG,
    Cause.NODE_FAILURE,
    Cause.PREFLIGHT,
    Cause.BY_SLURM,
    Cause.ERROR,
)


def young_daly(save_seconds: float, mtbf_seconds: float) -> float:
    """The optimal time between checkpoints, first order (Young 1974; Daly 2006)."""
    return math.sqrt(2.0 * save_seconds * mtbf_seconds)


@dataclass(frozen=True)
class Choice:
    iterations: int
    seconds: float | None  # the interval in training time (None: no step time yet)
    save_seconds: float
    save_source: str  # "measured (N saves)" or "assumed"
    mtbf_seconds: float
    mtbf_source: str  # "declared", "observed (N interruptions in H h)", "assumed"
    step_seconds: float | None
    bound: str | None = None  # what capped it, if anything

    def describe(self) -> str:
        step = f" at {self.step_seconds:.2f} s/iteration" if self.step_seconds else ""
        why = (
            f"save {self.save_seconds:.0f} s ({self.save_source}), MTBF {self.mtbf_seconds / 3600:.1f} h "
            f"({self.mtbf_source})"
        )
        if self.seconds is None:
            return f"{self.iterations} iterations until a step time is measured ({why})"
        cap = f", {self.bound}" if self.bound else ""
        rule = "by Young/Daly sqrt(2 x save x MTBF)"
        return f"{self.iterations} iterations = {self.seconds:.0f} s{step} {rule} ({why}{cap})"

    def to_json(self) -> dict:
        return asdict(self)


def measured_save_seconds(run: RunDir | None, before: float | None = None) -> tuple[float | None, int]:
    """What a save of the run's has cost training so far (the median: a background save's stall, else
    its whole time), and how many there were."""
    if run is None:
        return None, 0
    saves = [e for e in run.events() if e.save_seconds and (before is None or e.time < before)]
    seconds = [e.stall_seconds for e in saves if e.stall_seconds is not None]
    return (statistics.median(seconds), len(seconds)) if seconds else (None, 0)


def measured_write_seconds(run: RunDir | None, before: float | None = None) -> float | None:
    """The median whole save (written and committed): a background save cannot come more often."""
    if run is None:
        return None
    seconds = [e.save_seconds for e in run.events() if e.save_seconds and (before is None or e.time < before)]
    return statistics.median(seconds) if seconds else None


def observed_mtbf(run: RunDir | None, before: float | None = None) -> tuple[float | None, int, float]:
    """Held time over interruptions, from the run's history: (MTBF or None, interruptions, held seconds)."""
    if run is None:
        return None, 0, 0.0
    from hpc_mm.run.timeline import build

    line = build(run, before or 0.0) if before else build(run, max((e.time for e in run.events()), default=0.0))
    count = sum(
        1
        for s in run.starts()
        if s.end is not None
        and s.end.kind in AGAIN
        and (s.end.cause or "") in INTERRUPTIONS
        and (before is None or s.end.time < before)
    )
    return (line.held_seconds / count if count and line.held_seconds > 0 else None), count, line.held_seconds


def step_seconds(run: RunDir | None, before: float | None = None) -> float | None:
    if run is None:
        return None
    from hpc_mm.run.timeline import step_seconds as median_step

    return median_step([r for r in run.metrics() if r.time is not None and (before is None or r.time < before)])


def choose(
    mtbf_hours: float | None,
    run: RunDir | None = None,
    before: float | None = None,
    grace_seconds: float | None = None,
    saves_on_signal: bool = True,
) -> Choice:
    """The interval for the next start. `grace_seconds`: the partition's preemption grace time (for an
    entry that cannot save on a signal, the interval stays within it)."""
    save, saves = measured_save_seconds(run, before)
    save_source = f"measured ({saves} save{'s' if saves != 1 else ''})" if save is not None else "assumed"
    save = ASSUMED_SAVE_SECONDS if save is None else save
    written = measured_write_seconds(run, before) or save
    if mtbf_hours:
        mtbf, mtbf_source = mtbf_hours * 3600.0, "declared"
    else:
        observed, count, held = observed_mtbf(run, before)
        if observed:
            mtbf, mtbf_source = (
                observed,
                f"observed: {count} interruption{'s' if count != 1 else ''} in {held / 3600:.1f} h",
            )
        else:
            mtbf, mtbf_source = ASSUMED_MTBF_SECONDS, "assumed"
    step = step_seconds(run, before)
    if not step:
        return Choice(FIRST_START, None, save, save_source, mtbf, mtbf_source, None)
    seconds, bound = young_daly(save, mtbf), None
    if seconds < written:  # a background save that holds training for nothing still takes its write
        seconds, bound = (
            written,
            f"no shorter than a whole save ({written:.1f} s): a save starts once the last is written",
        )
    if not saves_on_signal and grace_seconds and seconds > grace_seconds:
        seconds, bound = (
            float(grace_seconds),
            f"kept within the partition's preemption grace time of {grace_seconds:.0f} s",
        )
    return Choice(max(1, round(seconds / step)), seconds, save, save_source, mtbf, mtbf_source, step, bound)


def worst_case_loss(spec, run_dir) -> dict | None:
    """For an entry that does not save on a stop signal: what a stop just before a save loses, in
    iterations, and in minutes from the run's measured step time (with --run-dir of a run that has
    logged iterations)."""
    from hpc_mm.job.entries import contract

    entry = contract(spec)
    if not entry.trains or entry.saves_on_signal(spec):
        return None
    iterations = entry.save_interval(spec)
    out = {"iterations": iterations, "step_seconds": None, "minutes": None}
    if run_dir is not None and Path(run_dir).is_dir():
        from hpc_mm.run.timeline import step_seconds

        step = step_seconds(RunDir(Path(run_dir)).metrics())
        if step:
            out.update(step_seconds=step, minutes=iterations * step / 60)
    return out
