"""What Slurm says about a job, as types: its `JobState` and a `SlurmJob`, whichever of squeue,
sacct or scontrol answered, read from their text (`query.py` asks them)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from hpc_mm.job import slurmtime
from hpc_mm.names import ENDED, JobState  # noqa: F401 - Slurm's job states: a closed set owned by names.py

_FIELD = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w:/.]*)=")
SACCT_FIELDS = "JobID,State,ExitCode,NNodes,NodeList,ElapsedRaw"
SQUEUE_FIELDS = "%i|%T|%r|%M|%L|%D|%N"


# A job preempted with PreemptMode=REQUEUE shows PREEMPTED for a moment and then runs again, so
# PREEMPTED is unfinished (as submitit counts it); UNKNOWN is neither.


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm sees it. Which fields are known depends on the command that answered."""

    job_id: str
    state: JobState = JobState.UNKNOWN
    source: str | None = None  # "squeue", "sacct" or "scontrol"; None when Slurm does not know the job
    reason: str | None = None  # why it is pending
    exit_code: str | None = None
    nodes: int | None = None
    nodelist: str | None = None
    elapsed_seconds: float | None = None
    time_left_seconds: float | None = None
    restarts: int | None = None
    partition: str | None = None
    end_time: str | None = None  # ISO time of the (expected) end
    preempt_time: str | None = None  # set when Slurm preempted the job
    stdout: str | None = None  # the batch log's path

    @property
    def ended(self) -> bool:
        return self.state.ended

    @property
    def known(self) -> bool:
        return self.source is not None


def parse_fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value with spaces`` (scontrol's one-line form) -> dict."""
    text = line.strip()
    starts = list(_FIELD.finditer(text))
    out = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        out[match.group(1)] = text[match.end() : end].rstrip()
    return out


def _int(text: str | None) -> int | None:
    text = (text or "").split("-")[0]
    return int(text) if text.isdigit() else None


def _set(value: str | None) -> str | None:
    return None if value in (None, "", "None", "Unknown", "(null)", "N/A") else value


def from_scontrol(job_id: str, line: str) -> SlurmJob:
    """A job from `scontrol show job -o`'s line ("" when Slurm does not know it)."""
    fields = parse_fields(line) if line.strip() else {}
    if not fields:
        return SlurmJob(job_id)
    return SlurmJob(
        job_id,
        JobState.parse(fields.get("JobState")),
        "scontrol",
        reason=_set(fields.get("Reason")),
        exit_code=_set(fields.get("ExitCode")),
        nodes=_int(fields.get("NumNodes")),
        nodelist=_set(fields.get("NodeList")),
        elapsed_seconds=slurmtime.printed_seconds(fields.get("RunTime")),
        restarts=_int(fields.get("Restarts")),
        partition=_set(fields.get("Partition")),
        end_time=_set(fields.get("EndTime")),
        preempt_time=_set(fields.get("PreemptTime")),
        stdout=_set(fields.get("StdOut")),
    )


def from_sacct(text: str, job_ids: list[str]) -> dict[str, SlurmJob]:
    """Jobs from sacct's parsable lines (SACCT_FIELDS); the last line of a requeued job is its newest."""
    found: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        job_id, state, exit_code, nodes, nodelist, elapsed = (line.split("|") + [""] * 6)[:6]
        if job_id in job_ids:
            found[job_id] = SlurmJob(
                job_id,
                JobState.parse(state),
                "sacct",
                exit_code=exit_code or None,
                nodes=_int(nodes),
                nodelist=_set(nodelist),
                elapsed_seconds=float(elapsed) if elapsed.isdigit() else None,
            )
    return found


def from_squeue(text: str, job_ids: set[str]) -> dict[str, SlurmJob]:
    """Jobs from squeue's lines (SQUEUE_FIELDS): the queue's state, pending reason, time used and left."""
    found = {}
    for line in text.splitlines():
        job_id, state, reason, used, left, nodes, nodelist = (line.split("|") + [""] * 7)[:7]
        if job_id in job_ids:
            found[job_id] = SlurmJob(
                job_id,
                JobState.parse(state),
                "squeue",
                reason=_set(reason),
                elapsed_seconds=slurmtime.printed_seconds(used),
                time_left_seconds=slurmtime.printed_seconds(left),
                nodes=_int(nodes),
                nodelist=_set(nodelist),
            )
    return found


@dataclass(frozen=True)
class Answer:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        return self.stderr.strip() or self.stdout.strip() or f"exit code {self.returncode}"


# What Slurm's tools say when the controller is not there (restarting, failing over, overloaded):
# worth asking again. A refusal (an invalid job id, a node configuration that cannot be met) is not.
UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connect failure",
    "zero bytes were transmitted or received",
    "resource temporarily unavailable",
    "slurm_persist_conn_open",
    "communication connection failure",
    "unexpected message received",  # a controller that is starting up again
    "in standby mode",  # a backup controller, before it takes over
)
# How long to keep asking a controller that is not there: a command of the batch script (a requeue
# that must not be lost) waits longer than one a person typed (`patience`).
PATIENCE = {"seconds": 20.0}


@contextlib.contextmanager
def patience(seconds: float):
    """Within this block, ask an unreachable controller again for up to `seconds`."""
    saved = PATIENCE["seconds"]
    PATIENCE["seconds"] = seconds
    try:
        yield
    finally:
        PATIENCE["seconds"] = saved


# After a requeue, each node refuses a new start of the job within the second its old one ended (the
# job's credential is revoked, to the second): a relaunch waits this long first (launch/hold.py, wait.py).
SETTLE_SECONDS = 3.0


def unreachable(answer: Answer | None) -> bool:
    """Did the controller not answer (as opposed to answer no)?"""
    if answer is None:
        return True
    return not answer.ok and any(words in answer.error.lower() for words in UNREACHABLE)


@dataclass(frozen=True)
class Preemption:
    """How a partition preempts its jobs: Slurm signals the job, gives it GraceTime, then kills it
    (after KillWait more seconds)."""

    partition: str
    mode: str  # PreemptMode: OFF, REQUEUE, CANCEL, SUSPEND, ...
    grace_seconds: int
    kill_wait_seconds: int

    @property
    def preempts(self) -> bool:
        return self.mode.upper() not in ("OFF", "")

    @property
    def seconds_to_save(self) -> int:
        """From the preemption's signal to the kill."""
        return self.grace_seconds + self.kill_wait_seconds

    @classmethod
    def read(cls, config_text: str, partition_lines: str, partition: str | None) -> Preemption | None:
        """From `scontrol show config` and `scontrol show partition -o [NAME]`; with no name, the
        default partition (Default=YES)."""
        config = parse_config(config_text)
        if not config:
            return None
        fields: dict[str, str] = {}
        for line in partition_lines.splitlines():
            candidate = parse_fields(line.strip())
            if candidate.get("PartitionName") == partition or (not partition and candidate.get("Default") == "YES"):
                fields = candidate
                break
        mode = fields.get("PreemptMode") or config.get("PreemptMode", "OFF")
        grace = fields.get("GraceTime", "0")
        kill_wait = config.get("KillWait", "30").split()[0]
        return cls(
            fields.get("PartitionName", partition or ""),
            mode.split(",")[0],
            int(grace) if grace.isdigit() else 0,
            int(kill_wait) if kill_wait.isdigit() else 30,
        )


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config`: `Name = value` lines."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def last_line(text: str) -> str:
    """The last line that says something (sbatch's refusal comes last)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text
