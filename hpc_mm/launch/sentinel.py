"""Nodes a running start leaves at a checkpoint, before they fail it: a node the site set DRAIN (or
Slurm found DOWN) while the job trains, and a node whose device the vendor's tool calls sick.

At each checkpoint the run commits, every node's launcher asks its devices' tools (environments/
health.py) and puts the answer in its heartbeat; node 0's launcher also asks Slurm for the states of
the start's nodes. When any of them should go, node 0 records `leaving` (the nodes, the cause, the
evidence) and ends the step right after that checkpoint: `hpc-mm finish` starts it again inside the
allocation without them, on a spare (cause `drain` or `device`, never counted against the restart
limits), or requeues it without them. Nothing is left behind that the checkpoint did not save.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hpc_mm.environments import health
from hpc_mm.environments.devices import Device
from hpc_mm.names import Cause, Kind
from hpc_mm.run import checkpoints
from hpc_mm.slurm import query

SITE_STATES = ("DRAIN", "DOWN", "NOT_RESPONDING", "FAIL", "NO_RESPOND")  # words of a node to leave


@dataclass(frozen=True)
class Leave:
    """Nodes to leave now, why, and what said so (one line a node)."""

    nodes: tuple[str, ...]
    cause: Cause
    evidence: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.evidence)


def to_leave(unhealthy: Mapping[str, tuple[str, ...]], states: Mapping[str, str]) -> Leave | None:
    """The policy, over what the nodes' tools and Slurm said of this start's nodes at a checkpoint: a
    node with a sick device goes (cause device), with the tool's lines; a node Slurm shows drained,
    draining or down goes (cause drain). None: every node stays."""
    sick = {host: lines for host, lines in unhealthy.items() if lines}
    if sick:
        evidence = tuple(f"{host}: {line}" for host, lines in sorted(sick.items()) for line in lines)
        return Leave(tuple(sorted(sick)), Cause.DEVICE, evidence)
    drained = {host: state for host, state in states.items() if any(w in state for w in SITE_STATES)}
    if drained:
        evidence = tuple(f"{host}: Slurm state {state}" for host, state in sorted(drained.items()))
        return Leave(tuple(sorted(drained)), Cause.DRAIN, evidence)
    return None


class Sentinel:
    """One launcher's checks at each checkpoint: `poll()` each heartbeat; it answers only when the
    committed checkpoint moved (the one the start began from is not a new one)."""

    def __init__(self, spec, folder: Path, device: str, began: float, env: Mapping[str, str] | None = None):
        self.spec, self.folder, self.device, self.began = spec, Path(folder), Device(device, 1), began
        self.env = dict(os.environ if env is None else env)
        self.seen = self.committed()
        self.problems: tuple[str, ...] = ()  # this node's device problems at the last checkpoint
        self.moved = False  # the last poll saw a new checkpoint

    def committed(self) -> int | None:
        if self.spec.resume.dir:
            return checkpoints.latest(self.spec, self.folder)
        return checkpoints.latest_iteration(self.folder)

    def poll(self) -> bool:
        """True when a new checkpoint committed since the last poll (its checks are then done)."""
        now = self.committed()
        self.moved = now is not None and now != self.seen
        if self.moved:
            self.seen = now
            started = time.monotonic()
            found = health.check(self.device, self.env, since=self.began)
            self.problems = found.problems
            for line in found.problems:
                sys.stderr.write(f"hpc-mm watchdog: at checkpoint {now}: {line}\n")
            if time.monotonic() - started > 5:
                sys.stderr.write(f"hpc-mm watchdog: device checks took {time.monotonic() - started:.0f} s\n")
        return self.moved

    def leave(self, run, key, beats, host: str, moved: bool):
        """Node 0, each heartbeat: the `leaving` event if a node of this start should go now (a sick
        device in any node's heartbeat; at a new checkpoint, a node Slurm shows drained or down)."""
        unhealthy = {b.host: b.health for b in beats if b.health}
        if self.problems:
            unhealthy[host] = self.problems
        hosts = sorted({b.host for b in beats} | {host})
        states = query.node_states(hosts) if moved and os.environ.get("SLURM_JOB_ID") else {}
        found = to_leave(unhealthy, {h: s for h, s in states.items() if h in hosts})
        if found is None:
            return None
        sys.stderr.write(
            f"hpc-mm watchdog: leaving {', '.join(found.nodes)} after checkpoint {self.seen} "
            f"({found.reason}); ending the step to start again without them\n"
        )
        return run.record(
            Kind.LEAVING,
            key,
            nodes=list(found.nodes),
            cause=found.cause,
            evidence=list(found.evidence),
            iteration=self.seen,
            reason=found.reason,
        )
