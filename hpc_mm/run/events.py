"""events.jsonl, the record of a run's life: one JSON object a line, ``event`` (a closed set of
kinds), ``time``, ``job_id``, ``restart``, and what else the writer said (``iteration``,
``reason``, ``cause``, ...); and the identity of a start.

A run directory holds many jobs (a resubmission with `--run-dir`, a chain of jobs, `hpc-mm local`
run again) and each job may start several times (requeues). A start is identified by its job (the
id as Slurm's tools name it: `<array>_<task>` for a task of a job array; `local_<time>` under
`hpc-mm local`) and its restart number within that job; every event a start writes carries both.
The run-wide number of a start (0, 1, 2, ... in the order they happened) is derived from the record,
never stored (see `RunDir.starts`). Code reads and writes events through `RunDir`; `read` here
gives them as plain objects, for tools and tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hpc_mm.environments.base import restart_from
from hpc_mm.environments.slurm import job_id_of
from hpc_mm.names import Kind
from hpc_mm.run.records import integer, number, read_objects

TERMINAL = frozenset(
    {Kind.REQUEUED, Kind.RESTARTED, Kind.COMPLETED, Kind.FAILED, Kind.STOPPED, Kind.CANCELLED, Kind.GAVE_UP}
)
# The ends of a start after which the run starts again (through the queue, or inside the allocation).
AGAIN = (Kind.REQUEUED, Kind.RESTARTED)


@dataclass(frozen=True, order=True)
class StartKey:
    """One start: its job and the restart within that job."""

    job_id: str | None
    restart: int

    @property
    def tag(self) -> str:
        """For file names: `<job>-r<restart>`."""
        return f"{self.job_id or 'nojob'}-r{self.restart}"

    def __str__(self) -> str:
        return f"job {self.job_id or '?'} restart {self.restart}"


# Under `hpc-mm local` (no scheduler), the id it gives the job, so that every start has one.
LOCAL_JOB_VARIABLE = "HPC_MM_JOB_ID"


def this_start(env: Mapping[str, str] | None = None) -> StartKey:
    """The start this process belongs to, from its environment."""
    env = os.environ if env is None else env
    return StartKey(job_id_of(env) or env.get(LOCAL_JOB_VARIABLE) or None, restart_from(env))


@dataclass(frozen=True)
class Event:
    """One line of events.jsonl: the kind, when, which start, and what else the writer said."""

    kind: Kind
    time: float
    job_id: str | None
    restart: int
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> StartKey:
        return StartKey(self.job_id, self.restart)

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    @property
    def iteration(self) -> int | None:
        return integer(self.data.get("iteration"))

    @property
    def save_seconds(self) -> float | None:
        """How long a checkpoint event's save took (a positive, finite number of seconds), else None:
        the one reading of a save's time (grace, the interval, goodput, history, the timeline)."""
        seconds = number(self.data.get("seconds")) if self.kind is Kind.CHECKPOINT else None
        return seconds if seconds is not None and seconds > 0 else None

    @property
    def stall_seconds(self) -> float | None:
        """What a checkpoint event's save cost training: a background save's `blocked` time, else
        (a save that holds training all along) its whole time. Goodput and the interval count this;
        a stop's grace and the hang budget count the whole save."""
        blocked = number(self.data.get("blocked")) if self.kind is Kind.CHECKPOINT else None
        if blocked is not None and blocked >= 0:
            return blocked
        return self.save_seconds

    @property
    def reason(self) -> str:
        return str(self.data.get("reason") or "")

    @property
    def cause(self) -> str:
        return str(self.data.get("cause") or "")

    def to_json(self) -> dict:
        return {
            "event": self.kind.value,
            "time": self.time,
            "job_id": self.job_id,
            "restart": self.restart,
            **self.data,
        }

    @classmethod
    def from_json(cls, value: dict) -> Event | None:
        try:
            kind = Kind(value.get("event"))
        except ValueError:
            return None
        when, restart = number(value.get("time")), integer(value.get("restart", 0))
        if when is None or restart is None:
            return None
        job_id = value.get("job_id")
        data = {k: v for k, v in value.items() if k not in ("event", "time", "job_id", "restart")}
        return cls(kind, when, str(job_id) if job_id not in (None, "") else None, restart, data)

    @classmethod
    def new(cls, kind: Kind, key: StartKey | None = None, **data) -> Event:
        key = key or this_start()
        at = data.pop("time", None)  # when it happened, if not now
        return cls(
            kind,
            round(at if isinstance(at, (int, float)) else time.time(), 3),
            key.job_id,
            key.restart,
            {k: v for k, v in data.items() if v is not None or k == "iteration"},
        )


def parse(path: Path) -> list[Event]:
    """The events in `path`, oldest first; lines that are not an event (a cut line, an unknown kind,
    no time or restart number) are skipped."""
    return [e for e in (Event.from_json(v) for v in read_objects(path)) if e is not None]


# The batch shell's clock at moments only it sees (bash's EPOCHREALTIME, exported by the script).
BATCH_CLOCK = {
    "batch_started_at": "HPC_MM_BATCH_STARTED_AT",
    "signal_at": "HPC_MM_SIGNAL_AT",
    "step_ended_at": "HPC_MM_STEP_ENDED_AT",
}


def batch_times(env: Mapping[str, str], *keys: str) -> dict:
    """{key: seconds since the epoch} for the batch shell's moments in `env` (when the script
    started, caught the first stop signal, saw the training step end): for status and report."""
    out = {}
    for key in keys:
        try:
            value = float(env.get(BATCH_CLOCK[key], "").replace(",", "."))  # EPOCHREALTIME follows the locale
        except ValueError:
            continue
        if 0 < value < float("inf"):
            out[key] = round(value, 3)
    return out


def lost_iterations(reached: int | None, committed: int | None) -> int:
    """Iterations a stopped start trained beyond its last committed checkpoint: the next start does
    them again. (`reached` is the last iteration logged, so with log_interval > 1 a lower bound.)"""
    if reached is None:
        return 0
    return max(0, reached - (committed or 0))
