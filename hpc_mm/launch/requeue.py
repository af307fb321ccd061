"""The policy after a training step ends: complete, requeue (and where not), or stop.

`decide` looks at what happened to this start (`Facts`, gathered by `finish.py`) and the run's
record. Its table, row by row in the order it is read (tests/unit/test_policy.py walks every row):
  - training finished: the committed checkpoint reached train_iters (a command: it ended with exit 0
    and nothing else went wrong): completed, even when a stop signal or a teardown error came after
    the last checkpoint;
  - the preflight failed: on some nodes, requeued without them (not counted); on every node, or on
    several in the same way, the job is wrong: failed;
  - the step hung: the watchdog ended it: requeued without the nodes that stopped first;
  - nodes left at a checkpoint: the site drained one, or its device's tool called it sick, while it
    trained (launch/sentinel.py): requeued without them (cause drain or device; not counted);
  - a node failed: Slurm marks it down or not responding: requeued without it (not counted);
  - a stop signal: to the batch shell, or only to the step. A preemption (Slurm set PreemptTime,
    whatever the signal) is requeued whenever training is unfinished and is not counted; SIGTERM
    otherwise is scancel: cancelled; the job's own signal at the time limit, or sent by hand, is
    requeued with restarts left (requeue.max_restarts) and if the checkpoint moved this start;
    another signal: failed;
  - the entry's own error: it refused the job with an `error:` line (a schedule the checkpoint
    refuses, a model file it cannot build from): failed, never retried: it would fail the same way;
  - a crash: a non-zero exit, no stop signal: requeued requeue.on_failure times, but the same
    failure at the same iteration twice in a row ends the job;
  - an exit 0 with training unfinished: no stop signal: a failure, never a completion;
  - requeue off: whatever a row above requeues fails instead (requeue.enabled false);
  - no progress: requeue.max_restarts_without_progress starts in a row that moved no checkpoint
    (preemptions aside) end the job, whatever would requeue it. A job that gives up exits with 3.
What is requeued may start again inside the allocation instead (`restart-inside`), and which nodes
both leave out; these rows come last, over the facts of the allocation (`Allocation`):
  - quarantine: the nodes a fault points at are quarantined when fault.quarantine is on: one node
    on its own evidence; several nodes from one fault only those that something else points at too
    (Slurm marks them down or drained, or an earlier fault named them), the others stay in
    (recorded as such); none at all when leaving them out would leave the partition too few nodes
    for the job (recorded);
  - restart inside: a fault that needs no queue (a crash, a hang, a node failure, a failed
    preflight, the entry's refusal, nodes left at a checkpoint) with requeue.inside on and no stop
    signal starts again inside the allocation without the nodes left out so far, the quarantined
    ones, the ones Slurm marks down or drained and the failed ones, when enough healthy nodes
    remain for the step (and, with fault.straggler_exclude, without the nodes of ranks named
    stragglers where a spare remains);
  - through the queue: otherwise it is requeued, kept off the quarantined nodes.
One fault is one decision: the quarantine is decided here once, whichever way the job goes on.
The limits count the starts of this submission (`submission`): a run resubmitted with --run-dir
starts counting again; a chain of jobs (requeue.mode: chain) is one submission.
Slurm may requeue a preempted job itself before `finish` runs; the next start then records that
requeue (`hold.note_requeue_by_slurm`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from hpc_mm.environments import health
from hpc_mm.job.entries import contract
from hpc_mm.job.spec import JobSpec
from hpc_mm.launch.quarantine import Allocation, Quarantine, quarantine_for
from hpc_mm.names import Action, Cause
from hpc_mm.run.events import AGAIN, Kind, StartKey
from hpc_mm.run.rundir import RunDir, Start
from hpc_mm.slurm.query import SlurmJob

PREEMPTION, TIME_LIMIT, SIGNAL, BY_SLURM = Cause.PREEMPTION, Cause.TIME_LIMIT, Cause.SIGNAL, Cause.BY_SLURM
HANG, NODE_FAILURE, PREFLIGHT, CRASH, ERROR = Cause.HANG, Cause.NODE_FAILURE, Cause.PREFLIGHT, Cause.CRASH, Cause.ERROR
DRAIN, DEVICE = Cause.DRAIN, Cause.DEVICE
# Requeues that are not the job's doing: they never use up requeue.max_restarts.
NOT_COUNTED = (PREEMPTION, BY_SLURM, NODE_FAILURE, PREFLIGHT, DRAIN, DEVICE)
GAVE_UP_EXIT = 3
clock = dt.datetime.now  # Slurm's times are local times


@dataclass(frozen=True)
class Facts:
    returncode: int
    signal: str | None = None  # USR1, TERM, ... (to the batch shell, or seen by the launchers)
    cause: str = SIGNAL  # for a signal: preemption, time-limit or signal (classify)
    start: StartKey = StartKey(None, 0)  # this start
    nodes: tuple[str, ...] = ()  # the nodes of this start
    iteration: int | None = None  # the last iteration this start logged
    preflight_failed: dict[str, list[str]] | None = None  # node -> problems (None: it passed or did not run)
    failed_nodes: tuple[str, ...] = ()  # nodes Slurm marks down or not responding
    hang: dict | None = None  # the watchdog's hang event of this start
    error: str | None = None  # the entry's own `error:` line (a job it refuses: never retried)
    allocation: Allocation | None = None  # the job's nodes as Slurm sees them (None: not under Slurm)
    stragglers: tuple[str, ...] = ()  # nodes of ranks the watchdog named stragglers in this start
    leaving: dict | None = None  # node 0's `leaving` event of this start: nodes drained or with a sick device


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    cause: str = ""
    exclude: tuple[str, ...] = field(default=())  # the nodes the next start leaves out
    failure: str = ""  # a crash's signature, to tell a repeating one
    quarantine: Quarantine = field(default_factory=Quarantine)
    own: tuple[str, ...] = ()  # nodes of `exclude` pointed at on their own evidence (a device's tool, Slurm)

    @property
    def requeue(self) -> bool:
        return self.action is Action.REQUEUE


def classify(job: SlurmJob, grace_seconds: int, now: dt.datetime | None = None) -> str:
    """Why a signalled job stopped, from the job as Slurm shows it: Slurm set its PreemptTime, or
    its end is near (the time-limit signal comes up to a minute earlier than asked), or neither."""
    if job.preempt_time:
        return PREEMPTION
    try:
        left = (dt.datetime.fromisoformat(job.end_time or "") - (now or clock())).total_seconds()
    except ValueError:
        return SIGNAL
    return TIME_LIMIT if left <= grace_seconds + 60 else SIGNAL


def submission(run: RunDir, key: StartKey) -> list[Start]:
    """The starts of this submission up to this one, oldest first: since the last job the user
    submitted (a resubmission with --run-dir gets fresh limits; a chain of jobs is one submission)."""
    starts = run.starts()
    here = next((i for i, s in enumerate(starts) if s.key == key), None)
    before = starts[: here + 1] if here is not None else [*starts, run.start(key)]
    begin = max((i for i, s in enumerate(before) if s.submitted), default=0)
    return before[begin:]


# Faults a start of the step can be repeated after inside the same allocation: nothing about them
# needs the queue (a preemption or the time limit does: the job must leave its nodes).
INSIDE_CAUSES = (CRASH, HANG, NODE_FAILURE, PREFLIGHT, ERROR, DRAIN, DEVICE)


def decide(spec: JobSpec, run: RunDir, facts: Facts) -> Decision:
    """The whole policy: what follows this start, and which nodes the next one leaves out."""
    decision = _decide(spec, run, facts)
    if decision.action is not Action.REQUEUE or facts.allocation is None:
        return decision
    quarantine = quarantine_for(spec, facts.allocation, decision.exclude, decision.own)
    inside = _inside(spec, facts, decision, quarantine)
    if inside is not None:
        return replace(decision, action=Action.RESTART_INSIDE, exclude=inside, quarantine=quarantine)
    return replace(decision, exclude=quarantine.avoid, quarantine=quarantine)


def _inside(spec: JobSpec, facts: Facts, decision: Decision, quarantine: Quarantine) -> tuple[str, ...] | None:
    """The nodes to leave out if the step can start again inside this allocation; None if it cannot."""
    allocation = facts.allocation
    if not (spec.requeue.inside and decision.cause in INSIDE_CAUSES and allocation.nodes and not facts.signal):
        return None
    nodes = allocation.nodes
    left_out = set(allocation.step_excluded) | set(quarantine.avoid) | allocation.sick(nodes) | set(facts.failed_nodes)
    exclude = tuple(sorted(left_out & set(nodes)))
    healthy = [n for n in nodes if n not in exclude]
    if len(healthy) < spec.nnodes:
        return None
    # A named straggler's node (fault.straggler_exclude) goes too, where a spare can take its place.
    slow = [n for n in dict.fromkeys(facts.stragglers) if n in healthy] if spec.fault.straggler_exclude else []
    if slow and len(healthy) - len(slow) >= spec.nnodes:
        exclude = tuple(sorted({*exclude, *slow}))
    return exclude


def training_finished(spec: JobSpec, run: RunDir) -> int | None:
    """The committed checkpoint, if it reached the end of training (then the start completed, whatever
    its processes did after it: a teardown error, a stop signal); None otherwise. The one rule for how
    a start ended, shared by finish (the batch script), hpc-mm local and a launch started by hand."""
    train_iters = contract(spec).train_iters(spec)
    latest = run.latest_checkpoint(spec)
    return latest if train_iters is not None and latest is not None and latest >= train_iters else None


def _decide(spec: JobSpec, run: RunDir, facts: Facts) -> Decision:
    latest = run.latest_checkpoint(spec) or 0
    train_iters = contract(spec).train_iters(spec)
    if train_iters is None:  # a command: it is done when it ends well
        if facts.returncode == 0 and not facts.signal and facts.preflight_failed is None and not facts.hang:
            return Decision(Action.COMPLETE, "the command ended (exit 0)")
    elif training_finished(spec, run) is not None:
        return Decision(Action.COMPLETE, f"training finished (checkpoint at iteration {latest})")
    starts = submission(run, facts.start)
    if facts.preflight_failed is not None:
        blamed = sorted(n for n in facts.preflight_failed if n)
        if blamed and (_same_everywhere(facts.preflight_failed, blamed) or set(blamed) >= set(facts.nodes)):
            return Decision(  # no node to leave out would help: the job is wrong
                Action.FAIL,
                "the preflight failed on every node: "
                + "; ".join(sorted({p for ps in facts.preflight_failed.values() for p in ps})),
                PREFLIGHT,
            )
        if not blamed:  # problems that point at no node: start again, leaving no one out
            said = "; ".join(facts.preflight_failed.get("", []))
            return _requeue(spec, starts, facts, PREFLIGHT, f"the preflight failed, blaming no node: {said}", latest)
        decision = _requeue(
            spec, starts, facts, PREFLIGHT, f"the preflight failed on {', '.join(blamed)}", latest, exclude=blamed
        )
        return replace(decision, own=tuple(n for n in blamed if _sick_device(facts.preflight_failed[n])))
    if facts.hang:
        blamed = (
            ", ".join(f"rank {b['rank']} on {b['host']}" for b in facts.hang.get("blamed", []))
            or "no rank in particular"
        )
        return _requeue(
            spec,
            starts,
            facts,
            HANG,
            f"hung in {facts.hang.get('phase')} for {facts.hang.get('stalled_seconds')} s (stopped first: {blamed})",
            latest,
            exclude=facts.hang.get("nodes", []),
        )
    if facts.leaving:
        nodes = [n for n in facts.leaving.get("nodes") or [] if isinstance(n, str)]
        decision = _requeue(
            spec,
            starts,
            facts,
            Cause(facts.leaving.get("cause", DRAIN)),
            f"left {', '.join(nodes)} after checkpoint {facts.leaving.get('iteration')}: {facts.leaving.get('reason')}",
            latest,
            exclude=nodes,
        )
        return replace(decision, own=tuple(nodes))
    if facts.failed_nodes:
        return _requeue(
            spec,
            starts,
            facts,
            NODE_FAILURE,
            f"node {', '.join(facts.failed_nodes)} failed",
            latest,
            exclude=list(facts.failed_nodes),
        )
    if facts.signal:
        return _signalled(spec, starts, facts, latest)
    if facts.error:
        return Decision(Action.FAIL, facts.error, ERROR)
    if facts.returncode != 0:
        return _crashed(spec, starts, facts, latest)
    return Decision(
        Action.FAIL,
        f"the step ended (exit 0) at checkpoint {latest} of {train_iters} without a "
        "stop signal; training is unfinished",
        CRASH,
    )


def _signalled(spec: JobSpec, starts: list[Start], facts: Facts, latest: int) -> Decision:
    r, cause = spec.requeue, facts.cause
    if cause != PREEMPTION and facts.signal == "TERM":
        return Decision(
            Action.CANCEL, f"cancelled (SIGTERM: scancel or the hard time limit) at checkpoint {latest}", cause
        )
    if cause != PREEMPTION and facts.signal != r.signal:
        return Decision(Action.FAIL, f"stopped by SIG{facts.signal}, not by requeue.signal {r.signal}", cause)
    return _requeue(
        spec,
        starts,
        facts,
        cause,
        f"stopped by {cause} (SIG{facts.signal}) at checkpoint {latest}"
        if cause != PREEMPTION
        else f"preempted; resuming from checkpoint {latest}",
        latest,
    )


def _same_everywhere(failed: dict[str, list[str]], blamed: list[str]) -> bool:
    """Did more than one node fail the preflight in the same way (a wrong job, not sick nodes)?"""
    # a device's own tool calling it sick is its node's fault, however many nodes say the same words
    blamed = [n for n in blamed if not _sick_device(failed[n])]
    if len(blamed) < 2:
        return False
    said = {node: sorted(p.replace(node, "NODE") for p in failed[node]) for node in blamed}
    return len({tuple(v) for v in said.values()}) == 1


def _sick_device(problems: list[str]) -> bool:
    """Are a node's preflight problems all its devices' own tools calling them sick?"""
    return bool(problems) and all(f": {health.FIELD}: " in p for p in problems)


def _ended(starts: list[Start], kinds: tuple[Kind, ...], *causes: str) -> list[Start]:
    """The starts before this one that ended with one of `kinds` (and one of `causes`, if given)."""
    return [s for s in starts[:-1] if s.end and s.end.kind in kinds and (not causes or s.end.cause in causes)]


def _crashed(spec: JobSpec, starts: list[Start], facts: Facts, latest: int) -> Decision:
    this = f"a crash after iteration {facts.iteration}"  # its signature (exit codes vary with which task srun saw)
    previous = starts[-2].end if len(starts) > 1 else None
    if previous and previous.cause == CRASH and previous.get("failure") == this:
        return Decision(
            Action.GIVE_UP, f"the same failure twice in a row ({this}); it would repeat", CRASH, failure=this
        )
    used = len(_ended(starts, AGAIN, CRASH))
    if used >= spec.requeue.on_failure:
        return Decision(
            Action.FAIL, f"{this}; not requeued (requeue.on_failure = {spec.requeue.on_failure})", CRASH, failure=this
        )
    decision = _requeue(
        spec,
        starts,
        facts,
        CRASH,
        f"{this}; retry {used + 1} of requeue.on_failure = {spec.requeue.on_failure}",
        latest,
        counted=False,
    )
    return Decision(decision.action, decision.reason, decision.cause, decision.exclude, this)


def _requeue(
    spec: JobSpec,
    starts: list[Start],
    facts: Facts,
    cause: str,
    reason: str,
    latest: int,
    exclude: list[str] = (),
    counted: bool = True,
) -> Decision:
    r = spec.requeue
    if not r.enabled:
        return Decision(Action.FAIL, f"{reason}; requeue.enabled is false", cause)
    if cause != PREEMPTION:
        stalled = _starts_without_progress(starts, latest)
        if stalled >= r.max_restarts_without_progress:
            return Decision(
                Action.GIVE_UP,
                f"{reason}; {stalled} starts in a row moved no checkpoint (still at "
                f"{latest}; requeue.max_restarts_without_progress = {r.max_restarts_without_progress})",
                cause,
            )
    if counted and cause not in NOT_COUNTED and cause != CRASH:
        used = len([s for s in _ended(starts, AGAIN) if s.end.cause not in NOT_COUNTED + (CRASH,)])
        if used >= r.max_restarts:
            return Decision(
                Action.FAIL,
                f"{reason}; restart limit reached ({used} of requeue.max_restarts = {r.max_restarts})",
                cause,
            )
        if cause in (TIME_LIMIT, SIGNAL) and latest <= _checkpoint_at_start(starts[-1]):
            return Decision(
                Action.FAIL,
                f"no progress this restart (checkpoint still at iteration {latest}); "
                "raise requeue.grace_seconds if the save did not fit in it",
                cause,
            )
    return Decision(Action.REQUEUE, reason, cause, tuple(exclude))


def _checkpoint_at_start(start: Start) -> int:
    return (start.started.get("checkpoint") if start.started else 0) or 0


def _starts_without_progress(starts: list[Start], latest: int) -> int:
    """How many starts in a row, this one included, ended with the checkpoint where they began."""
    count, moved_to = 0, latest
    for start in reversed(starts):
        if start.started is None:  # it never trained (a failed preflight): no progress either
            if start.end is None and start is not starts[-1]:
                break
            count += 1
            continue
        at = _checkpoint_at_start(start)
        if moved_to > at:
            break
        count += 1
        moved_to = at
    return count
