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

import os
import re
import signal
import sys
import time
from pathlib import Path

from hpc_mm.environments.slurm import expand_nodelist
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import events
from hpc_mm.run.events import Kind, StartKey, this_start
from hpc_mm.run.records import ended_by_host
from hpc_mm.run.rundir import RunDir, Start
from hpc_mm.slurm import query
from hpc_mm.slurm.requeue import GAVE_UP_EXIT, SIGNAL, Decision, Facts, classify, decide

_BAD_NODE = ("DOWN", "NOT_RESPONDING", "FAIL", "NO_RESPOND")


def finish(
    run_dir: Path, returncode: int, signal_name: str | None, failed: str | None = None, preflight_failed: bool = False
) -> int:
    run, key = RunDir(run_dir), this_start()
    if failed:  # the batch shell ended before the step (a setup line, an exit): nothing to requeue
        run.record(Kind.FAILED, key, reason=failed, cause="batch-script", returncode=returncode)
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
            cause="user",
            returncode=returncode,
            iteration=latest,
            **events.batch_times(env, "signal_at", "step_ended_at"),
        )
        print(f"hpc-mm: cancelled; the last checkpoint is iteration {latest}", flush=True)
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
        preflight_failed=_preflight_failures(run, key, nodes) if preflight_failed else None,
        failed_nodes=(_failed_nodes(spec, run, key, nodes) if returncode != 0 and not (signal_name or hang) else ()),
        hang=dict(hang.data) if hang else None,
        error=exited.get("error") if exited else None,
    )
    if facts.preflight_failed:
        run.record(Kind.PREFLIGHT, key, failed=facts.preflight_failed, nodes=list(nodes))
    if facts.error:
        print(f"error: {facts.error}", flush=True)  # the entry's own line, in the batch log too
    decision = decide(spec, run, facts)
    return _act(spec, run, key, decision, facts)


def _iteration_reached(run: RunDir, this: Start) -> int | None:
    rows = [r.iteration for r in run.metrics() if this.began is None or (r.time or 0) >= this.began]
    return rows[-1] if rows else None


def _preflight_failures(run: RunDir, key: StartKey, nodes: tuple[str, ...]) -> dict[str, list[str]]:
    """node -> its problems, from the preflight's results (a node with no result did not answer)."""
    results = run.preflight_results(key)
    failed = {node: list(r.problems) for node, r in results.items() if r.problems}
    for node in nodes:
        if node not in results:
            failed[node] = [f"{node}: no preflight result (the check did not run there)"]
    return failed


_SRUN_TASK = re.compile(r"^srun: error: (?P<node>\S+): task \d+: (?P<how>.+)$")
_SRUN_NODE = re.compile(r"^srun: error: Node failure on (?P<node>\S+)")


def _failed_nodes(spec: JobSpec, run: RunDir, key: StartKey, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The node whose part of the step died first, when its hpc-mm launcher died with it: srun's
    first complaint names it ("Node failure on", or its task killed while its launcher never said
    goodbye), and Slurm's own view (down, not responding) confirms where srun says nothing."""
    ended = ended_by_host(run.heartbeats(key))
    first = _srun_first_failure(spec, run, key)
    if first is not None:
        node, how = first
        vanished = not ended.get(node, False)
        if how == "node failure" or (vanished and "Killed" in how):
            return (node,)
        return ()
    states = query.node_states(list(nodes))
    return tuple(
        sorted(n for n, s in states.items() if any(word in s for word in _BAD_NODE) and not ended.get(n, False))
    )


def _srun_first_failure(spec: JobSpec, run: RunDir, key: StartKey) -> tuple[str, str] | None:
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


def _act(spec: JobSpec, run: RunDir, key: StartKey, decision: Decision, facts: Facts) -> int:
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
    if decision.action != "complete" and facts.iteration is not None:
        said["lost_iterations"] = events.lost_iterations(facts.iteration, latest)
    print(f"hpc-mm: {decision.action}: {decision.reason}", flush=True)
    if decision.action == "complete":
        run.record(Kind.COMPLETED, key, **said)
        return 0
    if decision.action == "requeue" and key.job_id:
        if _requeue(spec, run, key, decision, said):
            return 0
    if decision.action == "cancel":
        run.record(Kind.CANCELLED, key, **said)
        return 0
    if decision.action == "give-up":
        run.record(Kind.GAVE_UP, key, **said)
        print(f"hpc-mm: gave up (exit code {GAVE_UP_EXIT}): {decision.reason}", flush=True)
        return GAVE_UP_EXIT
    run.record(Kind.FAILED, key, **said)
    return facts.returncode or 1


def _requeue(spec: JobSpec, run: RunDir, key: StartKey, decision: Decision, said: dict) -> bool:
    exclude = _quarantine(spec, run, key, decision)
    if spec.requeue.mode == "chain":
        new_id, err = query.submit_continuation(str(run.script), spec.name, key.restart + 1, exclude)
        if new_id is None:
            print(f"hpc-mm: the next job could not be submitted: {err}", file=sys.stderr, flush=True)
            run.record(Kind.FAILED, key, **{**said, "reason": f"{decision.reason}; sbatch refused the next job: {err}"})
            return True  # recorded; the batch script exits with this job's failure
        run.record_job_id(new_id)
        run.record(Kind.REQUEUED, key, **said, next_job_id=new_id, exclude=exclude)
        print(f"hpc-mm: continues as job {new_id} (requeue.mode chain)", flush=True)
        return True
    # Requeuing a running job ends its batch script (SIGTERM, then SIGKILL after KillWait): the
    # requeue must not cost the record of it, nor the nodes to keep off (settable only once the
    # job is pending again).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ok, err = query.requeue(key.job_id)
    if not ok:
        print(f"hpc-mm: requeue of job {key.job_id} failed: {err}", file=sys.stderr, flush=True)
        return False
    if exclude:
        applied, err = query.exclude_nodes(key.job_id, exclude)
        if not applied:
            print(
                f"hpc-mm: could not keep job {key.job_id} off {', '.join(exclude)}: {err}", file=sys.stderr, flush=True
            )
    run.record(Kind.REQUEUED, key, **said, exclude=exclude)
    print(f"hpc-mm: requeued job {key.job_id}: {decision.reason}", flush=True)
    spawn_release(key, run)
    return True


def spawn_release(key: StartKey, run: RunDir) -> None:
    """Slurm holds a requeued job back for about two minutes (it sets the job's begin time when its
    batch script has ended: AuthInfo's cred_expire, 120 s by default), so the hold can only be lifted
    after this script is gone: by a small process of its own session that waits for the job to be
    pending again and then sets its start time to now (`hpc-mm release-hold`). Where Slurm ends every
    process of the job (proctrack/cgroup), it ends too, and the job waits the hold out."""
    import subprocess

    out = os.environ.get("SLURM_JOB_ID") and run.batch_log(run.job.name, os.environ["SLURM_JOB_ID"])
    with open(out or os.devnull, "a") as log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc_mm",
                "release-hold",
                str(key.job_id),
                str(run.path),
                "--restart",
                str(key.restart + 1),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


HOLD_WAIT = 300.0  # how long release-hold waits for the job to be pending again


def release_hold(job_id: str, run_dir: Path, restart: int, clock=time.monotonic, sleep=time.sleep) -> int:
    """`hpc-mm release-hold`: once the requeued job waits for its begin time, set it to now."""
    deadline = clock() + HOLD_WAIT
    while clock() < deadline:
        job = query.show_job(job_id)
        if job.known and not job.state.queued and job.state.value != "COMPLETING":
            return 0  # it started already (or ended): nothing to release
        if job.state.queued and job.reason == "BeginTime":
            released, err = query.release_hold(job_id)
            if released:
                RunDir(run_dir).record(Kind.RELEASED, StartKey(job_id, restart))
                print(
                    f"hpc-mm: released Slurm's hold on requeued job {job_id}: it starts as soon as it has nodes",
                    flush=True,
                )
                return 0
            print(f"hpc-mm: job {job_id} waits Slurm's hold after a requeue (about 2 minutes): {err}", flush=True)
            return 1
        sleep(1.0)
    return 1


def _quarantine(spec: JobSpec, run: RunDir, key: StartKey, decision: Decision) -> list[str]:
    """The nodes the next start must avoid: those blamed before and now, unless that leaves the job
    too few nodes in its partition (then it waits for them, and says so)."""
    quarantined = [e for e in run.events() if e.kind is Kind.QUARANTINED]
    before = {n for e in quarantined if e.get("applied") for n in e.get("nodes", [])}
    new = [n for n in decision.exclude if n and n not in before]
    if not spec.fault.quarantine or not new:
        return sorted(before) if spec.fault.quarantine else []
    wanted = sorted(before | set(new))
    partition = (query.show_job(key.job_id).partition or spec.slurm.partition or "").split(",")[0]
    total = query.partition_nodes(partition) if partition else None
    if total is not None and total - len(wanted) < spec.nnodes:
        run.record(
            Kind.QUARANTINED,
            key,
            nodes=new,
            applied=False,
            evidence=decision.reason,
            reason=f"leaving out {', '.join(wanted)} would leave {total - len(wanted)} node(s) of "
            f"{partition} for a {spec.nnodes}-node job; it runs on the nodes it can get",
        )
        return sorted(before)
    run.record(Kind.QUARANTINED, key, nodes=new, applied=True, evidence=decision.reason, cause=decision.cause)
    return wanted
