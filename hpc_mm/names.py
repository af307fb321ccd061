"""Closed sets of names that several layers compare against, each owned here, at the bottom of the
package (every layer may import it; it imports nothing of hpc-mm). Strings exist only where JSON or
the command line meets the code: `Watch("liveness")`, `watch.value`."""

from __future__ import annotations

from enum import Enum


class Name(str, Enum):
    """A name of a closed set: compares, prints and serialises as its value ("crash", not Cause.CRASH)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __hash__(self) -> int:  # as its value's: {"crash": ...}[Cause.CRASH] finds it (Enum hashes the name)
        return hash(self.value)


class Kind(Name):
    """What an event says. The terminal ones end a start; the others happen during it."""

    SUBMITTED = "submitted"  # a job was submitted for this run (hpc-mm submit, or hpc-mm local)
    STARTED = "started"  # the leader's launcher began training on the nodes
    SIGNAL = "signal"  # the launchers caught a stop signal (finish decides what follows)
    EXITED = "exited"  # the training step ended: exit code, the entry's error line, a hang
    CHECKPOINT = "checkpoint"  # a checkpoint committed (iteration, reason, seconds)
    RESUMED = "resumed"  # the entry loaded a checkpoint (its own, or pretrained weights)
    HANG = "hang"  # node 0's watchdog found the step hung
    STRAGGLER = "straggler"  # node 0's watchdog found a rank slower than the others (run/stragglers.py)
    LEAVING = "leaving"  # at a checkpoint, nodes to leave: drained by the site, or a sick device (launch/sentinel.py)
    PREFLIGHT = "preflight"  # the preflight failed on some nodes
    QUARANTINED = "quarantined"  # nodes to keep off the next start
    RELEASED = "released"  # Slurm's hold on the requeued job was lifted: this start may begin at once
    REQUEUED = "requeued"  # back through Slurm's queue (a preemption, the time limit, no healthy nodes left)
    RESTARTED = "restarted"  # started again inside the same allocation, without the nodes to blame
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    GAVE_UP = "gave_up"

    @property
    def terminal(self) -> bool:
        return self in (
            Kind.REQUEUED, Kind.RESTARTED, Kind.COMPLETED, Kind.FAILED, Kind.STOPPED, Kind.CANCELLED, Kind.GAVE_UP
        )  # fmt: skip


# The events a notification may follow, and those it follows unless the job says which: how a run
# ends, and what needs a person (a hang, a node kept out, giving up).
NOTIFIED = (
    Kind.STARTED, Kind.CHECKPOINT, Kind.HANG, Kind.STRAGGLER, Kind.LEAVING, Kind.QUARANTINED, Kind.REQUEUED,
    Kind.RESTARTED, Kind.COMPLETED, Kind.FAILED, Kind.STOPPED, Kind.CANCELLED, Kind.GAVE_UP,
)  # fmt: skip
NOTIFIED_BY_DEFAULT = (
    Kind.COMPLETED,
    Kind.FAILED,
    Kind.STOPPED,
    Kind.CANCELLED,
    Kind.GAVE_UP,
    Kind.HANG,
    Kind.QUARANTINED,
)


class Watch(Name):
    """What the hang watchdog counts as a running step making progress (launch/watchdog.py)."""

    ITERATIONS = "iterations"  # Megatron's and the FSDP2 trainer's iteration lines: start-up, step, checkpoint
    PATTERN = "pattern"  # lines matching the job's fault.progress_pattern: start-up, then step
    LIVENESS = "liveness"  # no known progress line: output, CPU time or the progress file moving


class Phase(Name):
    """The phase of a step the watchdog judges, each with its own budget."""

    STARTUP = "startup"
    STEP = "step"
    CHECKPOINT = "checkpoint"
    LIVENESS = "liveness"
    TEARDOWN = "teardown"  # after the last iteration and its save: only the processes' exit is left


# Words of Slurm's node states that mean a node is gone (it also says DRAIN for one taken out of use).
BAD_NODE = ("DOWN", "NOT_RESPONDING", "FAIL", "NO_RESPOND")

# What `requeue.signal` may be, and what the batch script traps (in this order): job/signals.py has the rest.
STOP_SIGNALS = ("USR1", "USR2", "TERM")

# `hpc-mm finish`'s exit code that tells the batch script to start the step again inside the allocation
# (the script and finish speak through it; any other code ends the script with it).
AGAIN_EXIT = 75


class Cause(Name):
    """Why a start ended, as events.jsonl records it (`cause`) and the restart policy weighs it."""

    PREEMPTION = "preemption"  # Slurm preempted the job (it set PreemptTime)
    TIME_LIMIT = "time-limit"  # the job's own signal near the time limit
    SIGNAL = "signal"  # the job's signal, sent by hand
    BY_SLURM = "slurm"  # Slurm requeued the job itself
    HANG = "hang"  # the watchdog ended a step that made no progress
    NODE_FAILURE = "node-failure"
    DRAIN = "drain"  # the site set a node DRAIN (or Slurm found it DOWN) while the job trained: left at a checkpoint
    DEVICE = "device"  # a device's own tool called it sick at a checkpoint: its node left
    PREFLIGHT = "preflight"
    CRASH = "crash"  # a non-zero exit without a stop signal
    ERROR = "error"  # the entry refused the job with an `error:` line
    USER = "user"  # hpc-mm cancel
    BATCH_SCRIPT = "batch-script"  # the batch script ended before the step (a setup line)


class Action(Name):
    """What the restart policy decides after a start (launch/requeue.py `decide`)."""

    COMPLETE = "complete"
    RESTART_INSIDE = "restart-inside"
    REQUEUE = "requeue"
    FAIL = "fail"
    CANCEL = "cancel"
    GIVE_UP = "give-up"


class Strategy(Name):
    """How the goodput simulator recovers from a fault (run/goodput.py)."""

    REQUEUE = "requeue"  # every fault back through the queue
    INSIDE = "inside"  # restart inside the allocation
    SPARES = "spares"  # restart inside, with spare nodes


class Fault(Name):
    """The faults the goodput simulator draws or replays."""

    CRASH = "crash"  # a process dies; the nodes are fine
    NODE = "node"  # a node is lost for good
    PREEMPTION = "preemption"
    REPEAT = "repeat"  # a crash that comes back right after a restart


class JobState(Name):
    """Slurm's job states (squeue's long names, sacct's, scontrol's JobState)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    PREEMPTED = "PREEMPTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # Slurm does not (or no longer) know the job, or could not be asked

    @classmethod
    def parse(cls, text: str | None) -> JobState:
        """sacct prints `CANCELLED by 0`, squeue `COMPLETING+`: the first word, without the `+`."""
        word = (text or "").split()[0].rstrip("+") if (text or "").split() else ""
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def ended(self) -> bool:
        return self in ENDED

    @property
    def queued(self) -> bool:
        """Waiting to start (again)."""
        return self in (JobState.PENDING, JobState.REQUEUED, JobState.REQUEUE_HOLD, JobState.SUSPENDED)


ENDED = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)


# A run's state as `status` shows it: Slurm's state of its newest job; where Slurm does not know the
# job (a local run, one long forgotten), what the run's record says; and these of hpc-mm's own.
RunState = Name(
    "RunState",
    [(s.name, s.value) for s in JobState]
    + [
        ("STARTING", "STARTING"),  # submitted, not started yet (the record's view)
        ("STOPPED", "STOPPED"),  # stopped by a signal and not requeued
        ("GAVE_UP", "GAVE_UP"),  # the restart policy gave up
        ("RENDERED", "RENDERED"),  # `render` wrote it; no job ran it (`sbatch RUN_DIR/job.sbatch`)
    ],
)


def run_state(job: JobState) -> RunState:
    """The run's state for its newest job as Slurm sees it."""
    return RunState(job.value)
