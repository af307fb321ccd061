"""Which nodes a start's end points at: the preflight's results, srun's first complaint, Slurm's
view of the nodes. A node is blamed on evidence only: one slow master, or a problem that points at
no node in particular, must not cost healthy nodes their place (quarantine, or an inside restart's
exclusion)."""

from __future__ import annotations

import os
import re

from hpc_mm.job.spec import JobSpec
from hpc_mm.names import BAD_NODE
from hpc_mm.run.events import StartKey
from hpc_mm.run.records import ended_by_host
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query


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
