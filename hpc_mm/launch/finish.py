"""`hpc-mm finish`: what the batch script runs after the training step, whatever happened to it.

It gathers what happened to this start (the stop signal, to the batch shell or only to the
step; the preflight's results; nodes Slurm marks failed; a hang; the entry's error line; the
step's exit code), asks the policy (requeue.py) what follows, and does it: records the start's end
in events.jsonl (every start ends with one terminal event there), requeues the job (or, with
requeue.mode chain, submits the next start as a new job) and lets it start again as soon as it
has nodes, and keeps the nodes to blame off the next start (quarantine).

Everything it reads belongs to this start: its job and restart (`this_start`), never an earlier
job's records in the same run directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
from pathlib import Path

from hpc_mm.environments.slurm import expand_nodelist
from hpc_mm.job.spec import JobSpec
from hpc_mm.launch.hold import spawn_release
from hpc_mm.launch.requeue import (
    GAVE_UP_EXIT,
    INSIDE_CAUSES,
    SIGNAL,
    Allocation,
    Decision,
    Facts,
    classify,
    decide,
)
from hpc_mm.names import AGAIN_EXIT, BAD_NODE, Action, Cause
from hpc_mm.run import events, notify
from hpc_mm.run.atomic import write_atomic
from hpc_mm.run.events import Kind, StartKey, this_start
from hpc_mm.run.format import last_checkpoint
from hpc_mm.run.records import ended_by_host
from hpc_mm.run.rundir import RunDir, Start
from hpc_mm.slurm import query


def finish(
    run_dir: Path, returncode: int, signal_name: str | None, failed: str | None = None, preflight_failed: bool = False
) -> int:
    """Decide and record how this start ended; then tell whom `notify:` names (a few seconds at most)."""
    run = RunDir(run_dir)
    before = len(run.events())
    try:
        return _finish(run, returncode, signal_name, failed, preflight_failed)
    finally:
        notify.deliver(run, run.reread().events()[before:])


def _finish(run: RunDir, returncode: int, signal_name: str | None, failed: str | None, preflight_failed: bool) -> int:
    key = this_start()
    if failed:  # the batch shell ended before the step (a setup line, an exit): nothing to requeue
        run.record(Kind.FAILED, key, reason=failed, cause=Cause.BATCH_SCRIPT, returncode=returncode)
        return returncode or 1
    spec = run.job
    env = os.environ
    this = run.start(key)
    request = run.cancel_request()
    if request is not None and request.applies_to(key.job_id, this.began):  # `hpc-mm cancel`: it saved; it ends here
        latest = run.latest_checkpoint(spec)
        run.record(
            Kind.CANCELLED,
            key,
            reason=f"cancelled by hpc-mm cancel; last checkpoint {latest}",
            cause=Cause.USER,
            returncode=returncode,
            iteration=latest,
            **events.batch_times(env, "signal_at", "step_ended_at"),
        )
        print(f"hpc-mm: cancelled; {last_checkpoint(latest)}", flush=True)
        if key.job_id:
            query.cancel(key.job_id)  # Slurm records the job as cancelled, not completed
        return 0
    # A stop that reached only the step (scancel --signal=USR1 without --batch) is a stop all the
    # same; a SIGTERM that reached only the step is srun ending it after a task failed.
    caught = this.last(Kind.SIGNAL)
    if signal_name is None and caught is not None and caught.get("name") == f"SIG{spec.requeue.signal}":
        signal_name = spec.requeue.signal
    nodes = tuple(expand_nodelist(env["SLURM_JOB_NODELIST"])) if env.get("SLURM_JOB_NODELIST") else ()
    hang = this.last(Kind.HANG)
    leaving = this.last(Kind.LEAVING)
    exited = this.last(Kind.EXITED)
    facts = Facts(
        returncode=returncode,
        signal=signal_name,
        start=key,
        nodes=nodes,
        cause=classify(query.show_job(key.job_id), spec.requeue.grace_seconds)
        if key.job_id and signal_name
        else SIGNAL,
        iteration=_iteration_reached(run, this),
        preflight_failed=preflight_failures(run, key, nodes, spec.nnodes) if preflight_failed else None,
        failed_nodes=(
            failed_nodes(spec, run, key, nodes) if returncode != 0 and not (signal_name or hang or leaving) else ()
        ),
        hang=dict(hang.data) if hang else None,
        leaving=dict(leaving.data) if leaving else None,
        error=exited.get("error") if exited else None,
        stragglers=tuple(n for e in this.all(Kind.STRAGGLER) for n in (e.get("nodes") or []) if isinstance(n, str)),
    )
    if facts.preflight_failed:
        run.record(Kind.PREFLIGHT, key, failed=facts.preflight_failed, nodes=list(nodes))
    if facts.error:
        print(f"error: {facts.error}", flush=True)  # the entry's own line, in the batch log too
    decision = decide(spec, run, facts)
    if decision.action is Action.REQUEUE and key.job_id:  # which nodes, and whether inside: Slurm's facts too
        facts = dataclasses.replace(facts, allocation=_allocation(spec, run, key, nodes, decision))
        decision = decide(spec, run, facts)
    return _act(spec, run, key, decision, facts)


def _allocation(spec: JobSpec, run: RunDir, key: StartKey, nodes: tuple[str, ...], decision: Decision) -> Allocation:
    """The job's nodes as the policy weighs them: who is left out already and what earlier faults of
    the run said of nodes (the record), and from Slurm, only where the decision can turn on them,
    the nodes' states (a restart inside, or one fault naming several nodes) and the partition's size
    (nodes to quarantine). A requeue that needs neither asks Slurm nothing more."""
    said = [e for e in run.events() if e.kind is Kind.QUARANTINED]

    def named(applied_only: bool) -> tuple[str, ...]:
        found = {n for e in said if e.get("applied") or not applied_only for n in (e.get("nodes") or [])}
        return tuple(sorted(n for n in found if isinstance(n, str)))

    quarantined = named(applied_only=True)
    inside = spec.requeue.inside and decision.cause in INSIDE_CAUSES and nodes
    pointed = [n for n in decision.exclude if n not in quarantined] if spec.fault.quarantine else []
    partition = (query.show_job(key.job_id).partition or spec.slurm.partition or "").split(",")[0] if pointed else ""
    return Allocation(
        nodes=nodes,
        states=query.node_states(list(nodes)) if nodes and (inside or len(pointed) > 1) else {},
        step_excluded=tuple(step_exclude(run, key)),
        partition=partition,
        partition_nodes=query.partition_nodes(partition) if partition else None,
        quarantined=quarantined,
        named=named(applied_only=False),
    )


def _iteration_reached(run: RunDir, this: Start) -> int | None:
    rows = [r.iteration for r in run.metrics() if this.began is None or (r.time or 0) >= this.began]
    return rows[-1] if rows else None


def _act(spec: JobSpec, run: RunDir, key: StartKey, decision: Decision, facts: Facts) -> int:
    """Do what the policy decided, once: record the start's end (and the fault's quarantine), then
    requeue, start again inside the allocation, or end."""
    latest = run.latest_checkpoint(spec)
    said = {
        "reason": decision.reason,
        "cause": decision.cause,
        "returncode": facts.returncode,
        "iteration": latest,
        **events.batch_times(os.environ, "signal_at", "step_ended_at"),
    }
    if decision.failure:
        said["failure"] = decision.failure
    if decision.action is not Action.COMPLETE and facts.iteration is not None:
        said["lost_iterations"] = events.lost_iterations(facts.iteration, latest)
    print(f"hpc-mm: {decision.action.value}: {decision.reason}", flush=True)
    if decision.action is Action.COMPLETE:
        run.record(Kind.COMPLETED, key, **said)
        return 0
    _record_quarantine(run, key, decision)
    if decision.action is Action.RESTART_INSIDE:
        return _restart_inside(run, key, decision, said, list(decision.exclude))
    if decision.action is Action.REQUEUE and key.job_id:
        if facts.allocation is not None and decision.cause in INSIDE_CAUSES and spec.requeue.inside:
            print(
                f"hpc-mm: too few healthy nodes left in the allocation for a {spec.nnodes}-node step; "
                "back through the queue",
                flush=True,
            )
        done, err = _requeue(spec, run, key, decision, said, list(decision.exclude))
        if done:
            return 0
        said["reason"] = f"{decision.reason}; the requeue failed: {err}"
    if decision.action is Action.CANCEL:
        run.record(Kind.CANCELLED, key, **said)
        return 0
    if decision.action is Action.GIVE_UP:
        run.record(Kind.GAVE_UP, key, **said)
        print(f"hpc-mm: gave up (exit code {GAVE_UP_EXIT}): {decision.reason}", flush=True)
        return GAVE_UP_EXIT
    run.record(Kind.FAILED, key, **said)
    return facts.returncode or 1


def _record_quarantine(run: RunDir, key: StartKey, decision: Decision) -> None:
    """The fault's quarantine as the policy decided it: who stays in, who is left out, or why not."""
    q = decision.quarantine
    kept = "one fault pointed at several nodes and nothing else points at these; they stay in"
    for nodes, said in ((q.kept_in, {"applied": False, "reason": kept}),
                        (q.refused, {"applied": False, "reason": q.refused_reason}),
                        (q.applied, {"applied": True, "cause": decision.cause})):  # fmt: skip
        if nodes:
            run.record(Kind.QUARANTINED, key, nodes=list(nodes), evidence=decision.reason, **said)


def _restart_inside(run: RunDir, key: StartKey, decision: Decision, said: dict, exclude: list[str]) -> int:
    """Record the start's end and tell the batch script to start the step again, without `exclude`."""
    path = run.step_exclude_file(os.environ.get("SLURM_JOB_ID", key.job_id))
    write_atomic(path, ",".join(exclude))
    run.record(Kind.RESTARTED, key, **said, exclude=exclude)
    left = f" without {', '.join(exclude)}" if exclude else ""
    print(f"hpc-mm: starting again inside job {key.job_id}{left}: {decision.reason}", flush=True)
    return AGAIN_EXIT


def next_restart(run_dir: Path) -> int:
    """`hpc-mm next-restart`: this start's number within its job: Slurm's restart count (or the one
    requeue.mode chain passed on), after every start this job has already made inside its allocation."""
    key = this_start()
    mine = [s.key.restart + 1 for s in RunDir(run_dir).starts() if s.job_id == key.job_id and (s.began or s.end)]
    return max([key.restart, *mine])


def _requeue(
    spec: JobSpec, run: RunDir, key: StartKey, decision: Decision, said: dict, exclude: list[str]
) -> tuple[bool, str]:
    """Requeue the job (or submit the next one, requeue.mode chain) without the nodes `exclude`
    names; (done, the error if not)."""
    if spec.requeue.mode == "chain":
        new_id, err = query.submit_continuation(str(run.script), spec.name, key.restart + 1, exclude)
        if new_id is None:
            print(f"hpc-mm: the next job could not be submitted: {err}", file=sys.stderr, flush=True)
            run.record(Kind.FAILED, key, **{**said, "reason": f"{decision.reason}; sbatch refused the next job: {err}"})
            return True, ""  # recorded; the batch script exits with this job's failure
        run.record_job_id(new_id)
        run.record(Kind.REQUEUED, key, **said, next_job_id=new_id, exclude=exclude)
        print(f"hpc-mm: continues as job {new_id} (requeue.mode chain)", flush=True)
        return True, ""
    # Requeuing a running job ends its batch script (SIGTERM, then SIGKILL after KillWait): the
    # requeue must not cost the record of it, nor the nodes to keep off (settable only once the
    # job is pending again).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ok, err = query.requeue(key.job_id)
    if not ok:
        print(f"hpc-mm: requeue of job {key.job_id} failed: {err}", file=sys.stderr, flush=True)
        return False, err
    if exclude:
        applied, err = query.exclude_nodes(key.job_id, exclude)
        if not applied:
            print(
                f"hpc-mm: could not keep job {key.job_id} off {', '.join(exclude)}: {err}", file=sys.stderr, flush=True
            )
    run.record(Kind.REQUEUED, key, **said, exclude=exclude)
    print(f"hpc-mm: requeued job {key.job_id}: {decision.reason}", flush=True)
    spawn_release(key, run)
    return True, ""


# ---------------------------------------------------------------- which nodes a start's end points at
# Which nodes a start's end points at: the preflight's results, srun's first complaint, Slurm's
# view of the nodes. A node is blamed on evidence only: one slow master, or a problem that points at
# no node in particular, must not cost healthy nodes their place (quarantine, or an inside restart's
# exclusion).


def preflight_failures(run: RunDir, key: StartKey, nodes: tuple[str, ...], step_nodes: int) -> dict[str, list[str]]:
    """The nodes the preflight's results point at, and their problems ("": problems that point at no
    node in particular). A node's own problems point at it. Whether a node reached the master's port
    is weighed first: a refused connection points at the master's side; a connection that found no
    answer points at the connecting node only when the master was reached by another node, and at
    nobody otherwise (one slow or unreachable master must not cost the healthy nodes their place)."""
    results = run.preflight_results(key)
    failed: dict[str, list[str]] = {node: list(r.problems) for node, r in results.items() if r.problems}
    master = next((r for r in results.values() if r.listening is not None), None)
    for node, r in results.items():
        if r.unreached is None:
            continue
        if master is not None and master.listening and r.unreached == "ECONNREFUSED":
            failed.setdefault(master.node, []).append(f"{master.node}: {r.unreached_problem}: the master refused")
        elif master is not None and master.listening and (master.accepted or 0) >= 1:
            failed.setdefault(node, []).append(f"{node}: {r.unreached_problem} (other nodes reached it)")
        else:
            failed.setdefault("", []).append(f"{node}: {r.unreached_problem}")
    step = [n for n in nodes if n not in step_exclude(run, key)]
    missing = [n for n in step if n not in results]
    if missing and len(step) == step_nodes:  # the step's nodes are known: the silent ones did not run it
        for node in missing:
            failed[node] = [f"{node}: no preflight result (the check did not run there)"]
    elif len(results) < step_nodes:
        failed.setdefault("", []).append(f"{step_nodes - len(results)} node(s) gave no preflight result")
    return failed


_SRUN_TASK = re.compile(r"^srun: error: (?P<node>\S+): task \d+: (?P<how>.+)$")
_SRUN_NODE = re.compile(r"^srun: error: Node failure on (?P<node>\S+)")


def failed_nodes(spec: JobSpec, run: RunDir, key: StartKey, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The node whose part of the step died first, when its hpc-mm launcher died with it: srun's
    first complaint names it ("Node failure on", or its task killed while its launcher never said
    goodbye), and Slurm's own view (down, not responding) confirms where srun says nothing."""
    ended = ended_by_host(run.heartbeats(key))
    first = srun_first_failure(spec, run, key)
    if first is not None:
        node, how = first
        vanished = not ended.get(node, False)
        if how == "node failure" or (vanished and "Killed" in how):
            return (node,)
        return ()
    states = query.node_states(list(nodes))
    return tuple(
        sorted(n for n, s in states.items() if any(word in s for word in BAD_NODE) and not ended.get(n, False))
    )


def srun_first_failure(spec: JobSpec, run: RunDir, key: StartKey) -> tuple[str, str] | None:
    """srun's first error about a node or task in this start's part of the batch log."""
    slurm_id = os.environ.get("SLURM_JOB_ID", str(key.job_id))
    try:
        lines = run.batch_log(spec.name, slurm_id).read_text(errors="replace").splitlines()
    except OSError:
        return None
    marker = f"hpc-mm: job {slurm_id} restart {key.restart} "
    begin = max((i for i, line in enumerate(lines) if line.startswith(marker)), default=0)
    for line in lines[begin:]:
        if (m := _SRUN_NODE.match(line)) is not None:
            return m["node"], "node failure"
        if (m := _SRUN_TASK.match(line)) is not None:
            return m["node"], m["how"]
    return None


def step_exclude(run: RunDir, key: StartKey) -> list[str]:
    path = run.step_exclude_file(os.environ.get("SLURM_JOB_ID", key.job_id))
    try:
        return [n for n in path.read_text().strip().split(",") if n]
    except OSError:
        return []
