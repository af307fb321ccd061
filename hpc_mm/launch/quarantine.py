"""What one fault does to the nodes it points at (the quarantine rows of launch/requeue.py's table),
over what is known of the job's nodes when a start ends (`Allocation`, gathered by finish)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from hpc_mm.job.spec import JobSpec
from hpc_mm.names import BAD_NODE


@dataclass(frozen=True)
class Allocation:
    """What the policy knows of the job's nodes when a start ends (gathered by finish)."""

    nodes: tuple[str, ...] = ()  # the whole allocation, spares included (SLURM_JOB_NODELIST)
    states: Mapping[str, str] = field(default_factory=dict)  # Slurm's state of each node (DOWN, DRAIN, ...)
    step_excluded: tuple[str, ...] = ()  # left out of this job's starts so far
    partition: str = ""
    partition_nodes: int | None = None  # nodes in the partition (None: Slurm cannot say)
    quarantined: tuple[str, ...] = ()  # nodes earlier faults of the run quarantined
    named: tuple[str, ...] = ()  # nodes earlier faults pointed at, quarantined or not

    def sick(self, nodes) -> set[str]:
        """The nodes Slurm itself marks down, not responding, failed or drained."""
        return {n for n in nodes if any(word in self.states.get(n, "") for word in BAD_NODE + ("DRAIN",))}


@dataclass(frozen=True)
class Quarantine:
    """What one fault does to nodes: those it quarantines, those it points at that stay in (one fault
    naming several, with nothing else against them), and a quarantine not applied (the partition
    would be too small: `refused` says so)."""

    applied: tuple[str, ...] = ()
    kept_in: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    refused_reason: str = ""
    avoid: tuple[str, ...] = ()  # every node the next start must avoid: earlier quarantines and `applied`


def quarantine_for(
    spec: JobSpec, allocation: Allocation, pointed: tuple[str, ...], own: tuple[str, ...] = ()
) -> Quarantine:
    """The quarantine one fault pointing at `pointed` earns (see the table above); `own`: those of
    them with evidence of their own (a device's tool, the site's drain), which is a second piece."""
    before = tuple(sorted(allocation.quarantined))
    if not spec.fault.quarantine:
        return Quarantine()
    new = [n for n in dict.fromkeys(pointed) if n and n not in before]
    kept_in: list[str] = []
    if len(new) > 1:  # one fault pointing at several nodes: only those with a second piece of evidence
        sure = [n for n in new if n in allocation.named or n in allocation.sick(new) or n in own]
        kept_in, new = sorted(set(new) - set(sure)), sure
    wanted = sorted(set(before) | set(new))
    total = allocation.partition_nodes
    if new and total is not None and total - len(wanted) < spec.nnodes:
        reason = (
            f"leaving out {', '.join(wanted)} would leave {total - len(wanted)} node(s) of "
            f"{allocation.partition} for a {spec.nnodes}-node job; it runs on the nodes it can get"
        )
        return Quarantine((), tuple(kept_in), tuple(new), reason, before)
    return Quarantine(tuple(new), tuple(kept_in), (), "", tuple(wanted))
