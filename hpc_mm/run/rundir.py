"""A run directory as one object: every path in it, and its records read and written as types.

`RunDir(path)` is cheap; what it reads (the job file, run.json, events.jsonl, metrics.jsonl) it
reads once and keeps, so a command that asks many questions of a run reads each file once. What
it writes goes to the file and into what it keeps. Names come from layout.py.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from hpc_mm.run import checkpoints, known, layout
from hpc_mm.run.atomic import PRIVATE, write_atomic
from hpc_mm.run.events import TERMINAL, Event, Kind, StartKey, parse
from hpc_mm.run.records import (
    CancelRequest,
    Heartbeat,
    Metric,
    PreflightResult,
    RunInfo,
    read_object,
    read_objects,
)

if TYPE_CHECKING:
    from hpc_mm.job.spec import JobSpec


@dataclass
class Start:
    """One start of the run: its identity, its run-wide number, and its events in order."""

    number: int
    key: StartKey
    events: list[Event] = field(default_factory=list)

    @property
    def job_id(self) -> str | None:
        return self.key.job_id

    def first(self, *kinds: Kind) -> Event | None:
        return next((e for e in self.events if e.kind in kinds), None)

    def last(self, *kinds: Kind) -> Event | None:
        return next((e for e in reversed(self.events) if e.kind in kinds), None)

    def all(self, *kinds: Kind) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    @property
    def started(self) -> Event | None:
        return self.first(Kind.STARTED)

    @property
    def began(self) -> float | None:
        """When training began on the nodes (None: the start never got that far)."""
        return self.started.time if self.started else None

    @property
    def end(self) -> Event | None:
        """How the start ended: its first terminal event (None while it runs)."""
        return self.first(*TERMINAL)

    @property
    def submitted(self) -> Event | None:
        return self.first(Kind.SUBMITTED)


def append_line(path: Path, entry: dict) -> None:
    """Append one JSON line; several nodes append, so under a lock, and after a line a crash cut
    short a newline first, so the new line stays whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            end = f.seek(0, os.SEEK_END)
            cut = end > 0 and os.pread(f.fileno(), 1, end - 1) != b"\n"
            f.write((b"\n" if cut else b"") + json.dumps(entry).encode() + b"\n")
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    """The run's events as JSON objects (as events.jsonl holds them), oldest first."""
    return [e.to_json() for e in parse(RunDir(run_dir).events_file)]


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    # ------------------------------------------------------------------ paths
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def job_file(self) -> Path:
        return self.path / layout.JOB_FILE

    @property
    def script(self) -> Path:
        return self.path / layout.SCRIPT_FILE

    @property
    def info_file(self) -> Path:
        return self.path / layout.RUN_FILE

    @property
    def logs(self) -> Path:
        return self.path / layout.LOGS

    @property
    def events_file(self) -> Path:
        return self.path / layout.EVENTS

    @property
    def metrics_file(self) -> Path:
        return self.path / layout.METRICS

    @property
    def cancel_file(self) -> Path:
        return self.path / layout.CANCEL_FILE

    def batch_log(self, name: str, slurm_job_id: str) -> Path:
        return self.logs / layout.BATCH_LOG.replace("%x", name).replace("%j", str(slurm_job_id))

    def is_run_dir(self) -> bool:
        return layout.is_run_dir(self.path)

    # ------------------------------------------------------------------ the job
    @functools.cached_property
    def job(self) -> JobSpec:
        from hpc_mm.job.jobfile import load_job

        return load_job(self.job_file)

    def checkpoint_dir(self, spec: JobSpec | None = None) -> Path:
        return layout.checkpoint_dir(spec or self.job, self.path)

    def latest_checkpoint(self, spec: JobSpec | None = None) -> int | None:
        """The newest whole checkpoint (checkpoints.latest_whole), found once per read of the run."""
        found = self.__dict__.setdefault("_latest", {})
        folder = self.checkpoint_dir(spec)
        if folder not in found:
            found[folder] = checkpoints.latest(spec or self.job, folder)
        return found[folder]

    # ------------------------------------------------------------------ run.json
    @functools.cached_property
    def info(self) -> RunInfo:
        value = read_object(self.info_file)
        return RunInfo.from_json(value) if value else RunInfo()

    def update_info(self, **changes) -> RunInfo:
        info = replace(self.info, **changes)
        write_atomic(self.info_file, json.dumps(info.to_json()), mode=PRIVATE)
        self.__dict__["info"] = info
        return info

    def record_job_id(self, job_id: str, **changes) -> None:
        """Remember which Slurm job runs this directory (submit, or the first start under plain sbatch)."""
        info = self.info
        if info.job_id == str(job_id) and not changes:
            return
        jobs = tuple(j for j in info.job_ids if j != str(job_id)) + (str(job_id),)
        self.update_info(**changes, job_id=str(job_id), job_ids=jobs)
        known.remember(str(job_id), self.path)

    # ------------------------------------------------------------------ events
    @functools.cached_property
    def _events(self) -> list[Event]:
        return parse(self.events_file)

    def events(self) -> list[Event]:
        return list(self._events)

    def reread(self) -> RunDir:
        """Forget what was read (a reader that waits for others' records)."""
        for name in ("_events", "_metrics", "info", "_latest"):
            self.__dict__.pop(name, None)
        return self

    def record(self, kind: Kind, key: StartKey | None = None, **data) -> Event:
        event = Event.new(kind, key, **data)
        append_line(self.events_file, event.to_json())
        if "_events" in self.__dict__:
            self._events.append(event)
        return event

    def starts(self) -> list[Start]:
        """Every start of the run, in the order they began to write (the order of events.jsonl:
        the nodes' clocks may differ, the order of their appends does not), numbered from 0 across
        the whole run directory: a resubmitted job's first start continues the count."""
        grouped: dict[StartKey, list[Event]] = {}
        for event in self._events:
            grouped.setdefault(event.key, []).append(event)
        return [Start(i, key, events) for i, (key, events) in enumerate(grouped.items())]

    def start(self, key: StartKey) -> Start:
        """The start `key` (empty when it has recorded nothing yet)."""
        return next((s for s in self.starts() if s.key == key), Start(len(self.starts()), key))

    # ------------------------------------------------------------------ metrics
    @functools.cached_property
    def _metrics(self) -> list[Metric]:
        return [m for m in (Metric.from_json(v) for v in read_objects(self.metrics_file)) if m is not None]

    def metrics(self) -> list[Metric]:
        return list(self._metrics)

    def write_metric(self, row: Metric) -> None:
        append_line(self.metrics_file, row.to_json())
        if "_metrics" in self.__dict__:
            self._metrics.append(row)

    # ------------------------------------------------------------------ heartbeats (launch/watchdog.py)
    def heartbeat_file(self, key: StartKey, node: int, task: int | None = None) -> Path:
        """One launcher's file: a node's (torchrun), or one task's on that node (srun starts every rank)."""
        name = f"{key.tag}-n{node}" if task is None else f"{key.tag}-n{node}-t{task}"
        return self.path / layout.HEARTBEATS / f"{name}.json"

    def progress_file(self, key: StartKey, node: int, task: int | None = None) -> Path:
        """A file the entry may touch to say it moved on ($HPC_MM_PROGRESS_FILE): one a launcher."""
        return self.heartbeat_file(key, node, task).with_suffix(".progress")

    @property
    def notifications_file(self) -> Path:
        return self.path / layout.NOTIFICATIONS

    def local_task_log(self, name: str, key: StartKey) -> Path:
        """Each emulated node's log under `hpc-mm local` (a pattern: mpirun puts the task for %t)."""
        return self.path / layout.local_task_log(name, key.job_id, key.restart)

    def ray_done_file(self, tag: str) -> Path:
        """Written by a Ray cluster's head when the driver of start `tag` has ended: the workers stop."""
        return self.path / f".ray-done-{tag}"

    def mpirun_log(self, name: str) -> Path:
        """What mpirun itself says under `hpc-mm local` (every start appends)."""
        return self.logs / f"{name}-local.mpirun.out"

    def interpreter_memo(self, node: str) -> Path:
        """The preflight's note that `node`'s interpreter imports the device's modules."""
        return self.path / layout.PREFLIGHT / f"interpreter-{node}.json"

    @property
    def report_figure(self) -> Path:
        return self.path / layout.REPORT_FIGURE

    @property
    def goodput_figure(self) -> Path:
        return self.path / layout.GOODPUT_FIGURE

    @property
    def submitit_folder(self) -> Path:
        return self.path / layout.SUBMITIT

    def msrun_logs(self, tag: str) -> Path:
        """msrun's own worker logs of one start."""
        return self.logs / f"msrun-{tag}"

    def step_exclude_file(self, job_id: str | None) -> Path:
        """The nodes the next start inside this Slurm job leaves out (written by finish, read by the
        batch script and by finish's next decision)."""
        return self.path / f"{layout.EXCLUDE_FILE}-{job_id}"

    def standby_file(self, job_id: str | None, node: str) -> Path:
        """A node's standby pool: how many are ready and what they hold (launch/standby.py)."""
        return self.path / layout.STANDBY / f"{job_id or 'local'}-{node}.json"

    def standby_states(self, job_id: str | None) -> list[dict]:
        found = sorted((self.path / layout.STANDBY).glob(f"{_glob(str(job_id or 'local'))}-*.json"))
        return [v for v in map(read_object, found) if isinstance(v, dict)]

    def peers_file(self, key: StartKey) -> Path:
        """Where the step's leading launcher listens for the others (launch/peers.py)."""
        return self.path / layout.HEARTBEATS / f"{key.tag}-peers.addr"

    def hang_marker(self, key: StartKey) -> Path:
        return self.path / layout.HEARTBEATS / f"{key.tag}-hang.json"

    def heartbeats(self, key: StartKey) -> list[Heartbeat]:
        found = sorted((self.path / layout.HEARTBEATS).glob(f"{_glob(key.tag)}-n*.json"))
        beats = (Heartbeat.from_json(v) for v in map(read_object, found) if v is not None)
        return [b for b in beats if b is not None]

    def write_heartbeat(self, target: Path, beat: Heartbeat | dict) -> None:
        write_atomic(target, json.dumps(beat.to_json() if isinstance(beat, Heartbeat) else beat))

    # ------------------------------------------------------------------ preflight (launch/preflight.py)
    def preflight_file(self, key: StartKey, node: str) -> Path:
        return self.path / layout.PREFLIGHT / f"{key.tag}-{node}.json"

    def write_preflight(self, key: StartKey, result: PreflightResult) -> None:
        write_atomic(self.preflight_file(key, result.node), json.dumps(result.to_json()))

    def preflight_results(self, key: StartKey) -> dict[str, PreflightResult]:
        found = (self.path / layout.PREFLIGHT).glob(f"{_glob(key.tag)}-*.json")
        results = (PreflightResult.from_json(v) for v in map(read_object, found) if v is not None)
        return {r.node: r for r in results if r is not None}

    # ------------------------------------------------------------------ the cancel request (slurm/cancel.py)
    def cancel_request(self) -> CancelRequest | None:
        value = read_object(self.cancel_file)
        return CancelRequest.from_json(value) if value else None

    def request_cancel(self, job_id: str | None) -> CancelRequest:
        request = CancelRequest(job_id, round(time.time(), 3))
        write_atomic(self.cancel_file, json.dumps(request.to_json()))
        return request


def _glob(text: str) -> str:
    """`text` with glob's special characters escaped (job ids are digits, `_` and letters)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in text)


def run_dirs(paths: Iterable[Path]) -> list[RunDir]:
    return [RunDir(p) for p in paths if layout.is_run_dir(p)]
