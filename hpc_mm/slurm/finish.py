"""`hpc-mm finish`: what the batch script runs after the training step, whatever happened to it.

It gathers what happened to this start (the stop signal, to the batch shell or only to the
step; the preflight's results; nodes Slurm marks failed; a hang; the step's exit code), asks the
policy (requeue.py) what follows, and does it: records the start's end in events.jsonl (every
start ends with a terminal event there), requeues the job (or, with requeue.mode chain, submits
the next start as a new job), and keeps the nodes to blame off the next start (quarantine).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

from hpc_mm.environments.base import restart_from
from hpc_mm.environments.slurm import expand_nodelist, job_id_of
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import checkpoints, events, heartbeats, layout, metrics
from hpc_mm.slurm import query
from hpc_mm.slurm.requeue import GAVE_UP_EXIT, SIGNAL, Decision, Facts, classify, decide

_BAD_NODE = ("DOWN", "NOT_RESPONDING", "FAIL", "NO_RESPOND")


def finish(run_dir: Path, returncode: int, signal_name: str | None, failed: str | None = None,
           preflight_failed: bool = False) -> int:
    run_dir = Path(run_dir)
    if failed:  # the batch shell ended before the step (a setup line, an exit): nothing to requeue
        events.record(run_dir, "failed", reason=failed, cause="batch-script", returncode=returncode)
        return returncode or 1
    spec = load_job(run_dir / layout.JOB_FILE)
    env = os.environ
    restart, job_id = restart_from(env), job_id_of(env)
    record = events.read(run_dir)
    this = [e for e in record if e.get("restart") == restart]
    if _cancel_asked(run_dir, this):  # `hpc-mm cancel`: the job saved on its signal; it ends here
        latest = checkpoints.latest_whole(layout.checkpoint_dir(spec, run_dir))
        events.record(run_dir, "cancelled", reason=f"cancelled by hpc-mm cancel; last checkpoint {latest}",
                      cause="user", returncode=returncode, iteration=latest,
                      **events.batch_times(env, "signal_at", "step_ended_at"))
        print(f"hpc-mm: cancelled; the last checkpoint is iteration {latest}", flush=True)
        if job_id:
            query.cancel(job_id)  # Slurm records the job as cancelled, not completed
        return 0
    # A stop that reached only the step (scancel --signal=USR1 without --batch) is a stop all the
    # same; a SIGTERM that reached only the step is srun ending it after a task failed.
    signal_name = signal_name or next((e["name"].removeprefix("SIG") for e in reversed(this)
                                       if e["event"] == "signal" and e.get("name") == f"SIG{spec.requeue.signal}"),
                                      None)
    nodes = tuple(expand_nodelist(env["SLURM_JOB_NODELIST"])) if env.get("SLURM_JOB_NODELIST") else ()
    hang = next((e for e in reversed(this) if e["event"] == "hang"), None)
    facts = Facts(
        returncode=returncode, signal=signal_name, restart=restart, nodes=nodes,
        cause=classify(query.show_job(job_id), spec.requeue.grace_seconds) if job_id and signal_name else SIGNAL,
        iteration=_iteration_reached(run_dir, this),
        preflight_failed=_preflight_failures(run_dir, restart, nodes) if preflight_failed else None,
        failed_nodes=(_failed_nodes(spec, run_dir, job_id, restart, nodes)
                      if returncode != 0 and not (signal_name or hang) else ()),
        hang=hang)
    if facts.preflight_failed:
        events.record(run_dir, "preflight", failed=facts.preflight_failed, nodes=list(nodes))
    decision = decide(spec, run_dir, facts)
    return _act(spec, run_dir, job_id, restart, decision, facts)


def _cancel_asked(run_dir: Path, this: list[dict]) -> bool:
    try:
        asked = json.loads((run_dir / layout.CANCEL_FILE).read_text()).get("time", 0)
    except (OSError, ValueError, AttributeError):
        return False
    started = next((e["time"] for e in this if e["event"] == "started"), 0)
    return asked >= started


def _iteration_reached(run_dir: Path, this: list[dict]) -> int | None:
    started = next((e["time"] for e in this if e["event"] == "started"), None)
    rows = [r["iteration"] for r in metrics.rows(run_dir) if started is None or r.get("time", 0) >= started]
    return rows[-1] if rows else None


def _preflight_failures(run_dir: Path, restart: int, nodes: tuple[str, ...]) -> dict[str, list[str]]:
    """node -> its problems, from the preflight's results (a node with no result did not answer)."""
    results = {}
    for path in (run_dir / layout.PREFLIGHT).glob(f"r{restart}-*.json"):
        try:
            result = json.loads(path.read_text())
            results[result["node"]] = [str(p) for p in result.get("problems", [])]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    failed = {node: problems for node, problems in results.items() if problems}
    for node in nodes:
        if node not in results:
            failed[node] = [f"{node}: no preflight result (the check did not run there)"]
    return failed


_SRUN_TASK = re.compile(r"^srun: error: (?P<node>\S+): task \d+: (?P<how>.+)$")
_SRUN_NODE = re.compile(r"^srun: error: Node failure on (?P<node>\S+)")


def _failed_nodes(spec: JobSpec, run_dir: Path, job_id: str | None, restart: int,
                  nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The node whose part of the step died first, when its hpc-mm launcher died with it: srun's
    first complaint names it ("Node failure on", or its task killed while its launcher never said
    goodbye), and Slurm's own view (down, not responding) confirms where srun says nothing."""
    ended = heartbeats.ended_by_host(heartbeats.read(run_dir, restart))
    first = _srun_first_failure(spec, run_dir, job_id, restart)
    if first is not None:
        node, how = first
        vanished = not ended.get(node, False)
        if how == "node failure" or (vanished and "Killed" in how):
            return (node,)
        return ()
    states = query.node_states(list(nodes))
    return tuple(sorted(n for n, s in states.items() if any(word in s for word in _BAD_NODE)
                        and not ended.get(n, False)))


def _srun_first_failure(spec: JobSpec, run_dir: Path, job_id: str | None, restart: int) -> tuple[str, str] | None:
    """srun's first error about a node or task in this start's part of the batch log."""
    log = run_dir / layout.LOGS / layout.BATCH_LOG.replace("%x", spec.name).replace(
        "%j", os.environ.get("SLURM_JOB_ID", str(job_id)))
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    marker = f"hpc-mm: job {os.environ.get('SLURM_JOB_ID', job_id)} restart {restart} "
    begin = max((i for i, line in enumerate(lines) if line.startswith(marker)), default=0)
    for line in lines[begin:]:
        if (m := _SRUN_NODE.match(line)) is not None:
            return m["node"], "node failure"
        if (m := _SRUN_TASK.match(line)) is not None:
            return m["node"], m["how"]
    return None


def _act(spec: JobSpec, run_dir: Path, job_id: str | None, restart: int, decision: Decision, facts: Facts) -> int:
    latest = checkpoints.latest_whole(layout.checkpoint_dir(spec, run_dir))
    said = {"reason": decision.reason, "cause": decision.cause, "returncode": facts.returncode, "iteration": latest,
            **events.batch_times(os.environ, "signal_at", "step_ended_at")}
    if decision.failure:
        said["failure"] = decision.failure
    print(f"hpc-mm: {decision.action}: {decision.reason}", flush=True)
    if decision.action == "complete":
        this = [e for e in events.read(run_dir) if e.get("restart") == restart]
        if not this or this[-1]["event"] != "completed":
            events.record(run_dir, "completed", **said)
        return 0
    if decision.action == "requeue" and job_id:
        if _requeue(spec, run_dir, job_id, restart, decision, said):
            return 0
    if decision.action == "cancel":
        events.record(run_dir, "cancelled", **said)
        return 0
    if decision.action == "give-up":
        events.record(run_dir, "gave_up", **said)
        print(f"hpc-mm: gave up (exit code {GAVE_UP_EXIT}): {decision.reason}", flush=True)
        return GAVE_UP_EXIT
    events.record(run_dir, "failed", **said)
    return facts.returncode or 1


def _requeue(spec: JobSpec, run_dir: Path, job_id: str, restart: int, decision: Decision, said: dict) -> bool:
    exclude = _quarantine(spec, run_dir, job_id, decision)
    if spec.requeue.mode == "chain":
        new_id, err = query.submit_continuation(str(run_dir / layout.SCRIPT_FILE), spec.name, restart + 1, exclude)
        if new_id is None:
            print(f"hpc-mm: the next job could not be submitted: {err}", file=sys.stderr, flush=True)
            events.record(run_dir, "failed", **{**said, "reason": f"{decision.reason}; sbatch refused the next job: {err}"})
            return True  # recorded; the batch script exits with this job's failure
        layout.record_job_id(run_dir, new_id)
        events.record(run_dir, "requeued", **said, next_job_id=new_id, exclude=exclude)
        print(f"hpc-mm: continues as job {new_id} (requeue.mode chain)", flush=True)
        return True
    # Requeuing a running job ends its batch script (SIGTERM, then SIGKILL after KillWait): the
    # requeue must not cost the record of it, nor the nodes to keep off (settable only once the
    # job is pending again).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ok, err = query.requeue(job_id)
    if not ok:
        print(f"hpc-mm: requeue of job {job_id} failed: {err}", file=sys.stderr, flush=True)
        return False
    if exclude:
        applied, err = query.exclude_nodes(job_id, exclude)
        if not applied:
            print(f"hpc-mm: could not keep job {job_id} off {', '.join(exclude)}: {err}", file=sys.stderr, flush=True)
    events.record(run_dir, "requeued", **said, exclude=exclude)
    print(f"hpc-mm: requeued job {job_id}: {decision.reason}", flush=True)
    return True


def _quarantine(spec: JobSpec, run_dir: Path, job_id: str, decision: Decision) -> list[str]:
    """The nodes the next start must avoid: those blamed before and now, unless that leaves the job
    too few nodes in its partition (then it waits for them, and says so)."""
    record = events.read(run_dir)
    before = {n for e in record if e["event"] == "quarantined" and e.get("applied") for n in e.get("nodes", [])}
    new = [n for n in decision.exclude if n and n not in before]
    if not spec.fault.quarantine or not new:
        return sorted(before) if spec.fault.quarantine else []
    wanted = sorted(before | set(new))
    partition = (query.show_job(job_id).get("Partition") or spec.slurm.partition or "").split(",")[0]
    total = query.partition_nodes(partition) if partition else None
    if total is not None and total - len(wanted) < spec.nnodes:
        events.record(run_dir, "quarantined", nodes=new, applied=False, evidence=decision.reason,
                      reason=f"leaving out {', '.join(wanted)} would leave {total - len(wanted)} node(s) of {partition} "
                             f"for a {spec.nnodes}-node job; it runs on the nodes it can get")
        return sorted(before)
    events.record(run_dir, "quarantined", nodes=new, applied=True, evidence=decision.reason, cause=decision.cause)
    return wanted
