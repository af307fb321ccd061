"""The records a run directory keeps besides its events (events.py), as types: metrics rows,
heartbeats, preflight results, the cancel request and run.json; and the JSON reading they share.

Readers skip what a crash or a concurrent writer can leave behind; a record that does not parse is
not one (see `read_objects`).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping


def number(value: Any) -> float | None:
    """A finite number, or None (text, a flag, NaN, infinity, an integer beyond a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    """A 64-bit integer, or None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return value if ok else None


@dataclass(frozen=True)
class Metric:
    """One row of metrics.jsonl: a training iteration as the entry logged it."""

    iteration: int
    loss: float
    time: float | None = None
    train_iters: int | None = None
    lr: float | None = None
    grad_norm: float | None = None
    consumed_samples: int | None = None
    global_batch_size: int | None = None
    step_ms: float | None = None
    samples_per_second: float | None = None
    # each rank's own compute time of the steps up to this one (seconds, a list per step, oldest first,
    # rank by rank; the built-in trainer writes them every few steps): what tells a slow rank from ranks
    # waiting for it in a collective (run/stragglers.py); None for a step in which the rank was preempted
    rank_seconds: tuple[tuple[float | None, ...], ...] | None = None

    @classmethod
    def from_json(cls, value: dict) -> Metric | None:
        iteration, loss = integer(value.get("iteration")), number(value.get("loss"))
        if iteration is None or loss is None:
            return None
        ints = ("train_iters", "consumed_samples", "global_batch_size")
        extra = {
            f.name: (integer if f.name in ints else number)(value.get(f.name))
            for f in fields(cls)
            if f.name not in ("iteration", "loss", "rank_seconds")
        }
        steps = value.get("rank_seconds")
        if isinstance(steps, list) and steps and all(isinstance(s, list) and s for s in steps):
            # (null: a step the rank was preempted in by another process, which says nothing of the rank)
            if all(v is None or number(v) is not None for s in steps for v in s):
                extra["rank_seconds"] = tuple(tuple(None if v is None else number(v) for v in s) for s in steps)
        return cls(iteration, loss, **extra)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.rank_seconds is not None:
            out["rank_seconds"] = [list(s) for s in self.rank_seconds]
        return out


@dataclass(frozen=True)
class Heartbeat:
    """One launcher's heartbeat (launch/watchdog.py): what its ranks last logged, their states."""

    node: int
    host: str
    pid: int
    time: float
    iteration: int | None = None
    last_progress: float = 0.0
    phase: str = "startup"
    ranks: tuple[dict, ...] = ()  # {"rank", "pid", "state", "cpu"}
    dumped: bool = False
    ended: bool = False
    health: tuple[str, ...] = ()  # this node's device problems at the last checkpoint (launch/sentinel.py)

    @classmethod
    def from_json(cls, value: dict) -> Heartbeat | None:
        try:
            return cls(
                node=int(value["node"]),
                host=str(value.get("host")),
                pid=int(value.get("pid", 0)),
                time=float(value.get("time", 0)),
                iteration=integer(value.get("iteration")),
                last_progress=float(value.get("last_progress") or 0.0),
                phase=str(value.get("phase")),
                ranks=tuple(r for r in value.get("ranks", []) if isinstance(r, dict)),
                dumped=bool(value.get("dumped")),
                ended=bool(value.get("ended")),
                health=tuple(str(line) for line in value.get("health") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class PreflightResult:
    """One node's preflight (launch/preflight.py): its own problems, one line each (none when it
    passed), and what it saw of the master's port: the master says whether it listened and how many
    nodes reached it; another node, how its connection failed (`unreached`: ECONNREFUSED,
    ETIMEDOUT, ...). `finish` weighs those against each other before it blames a node."""

    node: str
    problems: tuple[str, ...]
    seconds: float = 0.0
    unreached: str | None = None  # this node could not reach the master: how (an errno name)
    unreached_problem: str | None = None  # ... in one line
    listening: bool | None = None  # the master: it listened on the port from the start of its preflight
    accepted: int | None = None  # the master: how many nodes connected

    @classmethod
    def from_json(cls, value: dict) -> PreflightResult | None:
        problems = value.get("problems", [])
        if not isinstance(value.get("node"), str) or not isinstance(problems, list):
            return None
        text = lambda key: str(value[key]) if isinstance(value.get(key), str) else None  # noqa: E731
        return cls(
            value["node"],
            tuple(str(p) for p in problems),
            float(number(value.get("seconds")) or 0.0),
            text("unreached"),
            text("unreached_problem"),
            value.get("listening") if isinstance(value.get("listening"), bool) else None,
            integer(value.get("accepted")),
        )

    def to_json(self) -> dict:
        out = {"node": self.node, "problems": list(self.problems), "seconds": self.seconds}
        for key in ("unreached", "unreached_problem", "listening", "accepted"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class CancelRequest:
    """`hpc-mm cancel` asked this job to stop (finish then records `cancelled`, not a requeue)."""

    job_id: str | None
    time: float

    @classmethod
    def from_json(cls, value: dict) -> CancelRequest | None:
        when = number(value.get("time"))
        if when is None:
            return None
        job_id = value.get("job_id")
        return cls(str(job_id) if job_id not in (None, "") else None, when)

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "time": self.time}

    def applies_to(self, job_id: str | None, began: float | None) -> bool:
        """A request belongs to the job it was made for (an old file without a job id: to the start
        it was made during)."""
        if self.job_id is not None:
            return self.job_id == job_id
        return began is not None and self.time >= began


@dataclass(frozen=True)
class RunInfo:
    """run.json: marks a folder as a run directory, and which Slurm jobs ran it."""

    job_id: str | None = None  # the newest job
    job_ids: tuple[str, ...] = ()  # every job, oldest first
    created: float | None = None
    submitted: float | None = None
    name: str | None = None
    nodes: int | None = None
    array: str | None = None  # a sweep's task: its array, task index and swept values
    task: int | None = None
    values: Mapping[str, Any] | None = None
    hpc_mm: str | None = None
    after: Mapping[str, Any] | None = None  # a pipeline's stage: {job id it waits for: its run directory}

    @classmethod
    def from_json(cls, value: dict) -> RunInfo:
        """Each field as its type says; a value of another type is missing (run.json may be edited or
        cut by hand: a reader never fails on it)."""

        def text(v):
            return str(v) if isinstance(v, str) and v or integer(v) is not None else None

        ids = value.get("job_ids")
        return cls(
            job_id=text(value.get("job_id")),
            job_ids=tuple(t for t in map(text, ids) if t) if isinstance(ids, list) else (),
            created=number(value.get("created")),
            submitted=number(value.get("submitted")),
            name=text(value.get("name")),
            nodes=integer(value.get("nodes")),
            array=text(value.get("array")),
            task=integer(value.get("task")),
            values=value.get("values") if isinstance(value.get("values"), dict) else None,
            hpc_mm=text(value.get("hpc_mm")),
            after=value.get("after") if isinstance(value.get("after"), dict) else None,
        )

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, ())}
        if self.job_ids:
            out["job_ids"] = list(self.job_ids)
        return out


def _int(text: str) -> int | None:
    return int(text) if len(text.lstrip("-")) <= 18 else None  # beyond 64 bits: not a count or a time


def _float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def loads(text: str):
    """JSON as the run directory's readers take it: every number finite and within 64 bits (NaN,
    Infinity, 1e400 and 20-digit integers are read as missing), so no reader meets one."""
    return json.loads(text, parse_constant=lambda _: None, parse_int=_int, parse_float=_float)


def read_objects(path: Path) -> list[dict]:
    """Every line of a JSON-lines file that is a JSON object; anything else is skipped."""
    try:
        data = Path(path).read_bytes()
    except OSError:  # absent, a folder, unreadable
        return []
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            value = loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_object(path: Path) -> dict | None:
    """A small JSON file holding one object; None when absent, unreadable or something else."""
    try:
        value = loads(Path(path).read_text(errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def ended_by_host(beats: list[Heartbeat]) -> dict[str, bool]:
    """Per host: did every launcher there say goodbye (`ended`)?"""
    out: dict[str, bool] = {}
    for beat in beats:
        out[beat.host] = out.get(beat.host, True) and beat.ended
    return out
