"""This process's part in the job: environment -> plan -> the entry's command line.

`resolve_plan` decides, for this process, the Megatron distributed arguments and the
backend (once; everything downstream takes them from the plan):
  - launcher `torchrun` (MindSpeed-MM's convention): this process is its node's agent and
    runs `torchrun --nproc_per_node --nnodes --node_rank --master_addr --master_port`;
    one scheduler task per node, so node rank = task rank.
  - launcher `srun`: this process is one training rank; it runs the entry with
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.environments import ClusterEnvironment, select_environment
from hpc_mm.environments.devices import check_device, mpi_available
from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.megatron import (
    declared_device,
    distributed_args,
    resolve_backend,
)
from hpc_mm.job.rules import validate
from hpc_mm.job.spec import JobSpec, with_world
from hpc_mm.run import interval, layout, trackers
from hpc_mm.run.events import StartKey, this_start
from hpc_mm.run.rundir import RunDir


@dataclass(frozen=True)
class Plan:
    environment: ClusterEnvironment
    mode: str  # "agent" (runs torchrun for its node) or "worker" (is one rank)
    nnodes: int
    node_rank: int
    nproc_per_node: int
    world_size: int
    rank: int | None
    local_rank: int | None
    master_addr: str
    master_port: int
    backend: str
    device: str
    hosts: list[str]
    spec: JobSpec | None = None  # with the topology of this allocation
    run_dir: Path | None = None
    job_id: str | None = None
    restart_count: int = 0
    start: StartKey | None = None  # which start of the run this is (its job and restart)
    interval: dict | None = None  # checkpoint.save_interval: auto: what it chose for this start, and why

    @property
    def leader(self) -> bool:
        """The one process that writes the run's record: node 0's agent, or rank 0."""
        return self.node_rank == 0 and self.rank in (None, 0)

    @property
    def node_leader(self) -> bool:
        """The one process per node that checks the node (its agent, or its local rank 0)."""
        return self.local_rank in (None, 0)

    @property
    def checkpoint_dir(self) -> Path:
        return layout.checkpoint_dir(self.spec, self.run_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    def distributed_args(self) -> list[str]:
        return distributed_args(self.nproc_per_node, self.nnodes, self.node_rank, self.master_addr, self.master_port)

    def describe(self) -> dict:
        return {
            "launcher": self.environment.name,
            "mode": self.mode,
            "job_id": self.job_id,
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "nproc_per_node": self.nproc_per_node,
            "world_size": self.world_size,
            "rank": self.rank,
            "local_rank": self.local_rank,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "backend": self.backend,
            "device": self.device,
            "hosts": self.hosts,
            "restart_count": self.restart_count,
            "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "distributed_args": " ".join(self.distributed_args()),
        }


def load_target(
    target: str | None,
    overrides: list[str] = (),
    run_dir: Path | None = None,
    nodes: int | None = None,
    nproc_per_node: int | str | None = None,
):
    """A run directory (holding job.yaml) or a job file -> (spec, run_dir); (None, None) without one."""
    if target is None:
        return None, None
    path = Path(target)
    if path.is_dir():
        if not layout.is_run_dir(path):
            raise UserError.one(
                str(path),
                f"is not a run directory (no {layout.JOB_FILE})",
                "pass the run directory printed by submit/render, or a job file",
            )
        return load_job(RunDir(path).job_file, overrides, nodes, nproc_per_node), path.resolve()
    spec = load_job(path, overrides, nodes, nproc_per_node)
    return spec, Path(run_dir or layout.default_run_dir(spec)).resolve()


def environment_for(spec: JobSpec | None, env: dict) -> ClusterEnvironment:
    """Where this process runs; the job file's topology fills what the launcher's variables leave open."""
    if spec is None:
        return select_environment(env)
    d = spec.distributed
    return select_environment(
        env,
        master_port=d.master_port if isinstance(d.master_port, int) else None,
        master_addr=d.master_addr if d.master_addr != "localhost" else None,
        nnodes=spec.nnodes,
        node_rank=d.node_rank,
    )


def resolve_plan(
    target: str | None = None,
    overrides: list[str] = (),
    run_dir: Path | None = None,
    env: dict | None = None,
    nodes: int | None = None,
    nproc_per_node: int | str | None = None,
) -> Plan:
    spec, run_dir = load_target(target, overrides, run_dir, nodes, nproc_per_node)
    env = dict(os.environ if env is None else env)
    spec, chosen = with_interval(spec, run_dir, env)
    d = spec.distributed if spec else None
    environment = environment_for(spec, env)
    environment.prepare()
    environment.check()
    device = check_device(declared_device(spec) if spec else None, env)
    requested = d.backend if d else "auto"
    backend = resolve_backend(requested, device.kind, mpi_available() if requested == "mpi" else None)
    common = dict(
        environment=environment,
        master_addr=environment.main_address(),
        master_port=environment.main_port(),
        backend=backend,
        device=device.kind,
        hosts=environment.hosts(),
        run_dir=run_dir,
        job_id=environment.job_id(),
        restart_count=environment.restart_count(),
        start=this_start(env),
        interval=chosen.to_json() if chosen else None,
    )
    if spec is not None and spec.entry.agent and environment.name != "torchrun":
        nproc = _nproc_per_node(spec, environment, device.count)
        nnodes, node_rank = environment.world_size(), environment.global_rank()
        return Plan(
            mode="agent",
            nnodes=nnodes,
            node_rank=node_rank,
            nproc_per_node=nproc,
            world_size=nnodes * nproc,
            rank=None,
            local_rank=None,
            spec=_checked(spec, nnodes, nproc),
            **common,
        )
    nnodes, nproc = environment.num_nodes(), environment.local_world_size()
    return Plan(
        mode="worker",
        nnodes=nnodes,
        node_rank=environment.node_rank(),
        nproc_per_node=nproc,
        world_size=environment.world_size(),
        rank=environment.global_rank(),
        local_rank=environment.local_rank(),
        spec=spec and _checked(spec, nnodes, nproc),
        **common,
    )


def with_interval(spec: JobSpec | None, run_dir: Path | None, env: dict, preemption=None):
    """checkpoint.save_interval: auto, chosen for this start (run/interval.py) from what the run
    measured before it began (the same answer on every node); (the spec with it, the choice)."""
    if spec is None or spec.checkpoint.save_interval != interval.AUTO:
        return spec, None
    from hpc_mm.job.entries import contract

    entry = contract(spec)
    run = RunDir(run_dir) if run_dir is not None and layout.is_run_dir(run_dir) else None
    before = env.get("HPC_MM_BATCH_STARTED_AT")
    grace = None
    if not entry.saves_on_signal(spec) and (preemption or env.get("SLURM_JOB_ID")):
        from hpc_mm.slurm import query

        found = preemption or query.preemption(env.get("SLURM_JOB_PARTITION") or spec.slurm.partition)
        grace = found.grace_seconds if found is not None and found.preempts and found.grace_seconds else None
    chosen = interval.choose(
        spec.fault.mtbf_hours,
        run,
        before=float(before) if before and before.replace(".", "", 1).isdigit() else None,
        grace_seconds=grace,
        saves_on_signal=entry.saves_on_signal(spec),
    )
    checkpoint = dataclasses.replace(spec.checkpoint, save_interval=chosen.iterations)
    return dataclasses.replace(spec, checkpoint=checkpoint), chosen


@dataclass(frozen=True)
class NodeShare:
    """A node's share of any start of the job, whichever step it is in (the standby pools' step
    spans the whole allocation, spares included, and is no training step to plan)."""

    spec: JobSpec
    run_dir: Path
    device: str
    mode: str  # agent: one launcher a node starts the ranks; worker: srun starts each rank
    nproc_per_node: int
    job_id: str | None


def job_env(env: dict, spec, run_dir) -> dict:
    """`env` with the job's own variables (a null value: unset, as a script's `unset X`) and hpc-mm's."""
    env = dict(env)
    for name, value in spec.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    env["HPC_MM_RUN_DIR"] = str(run_dir)
    for name, value in trackers.env(run_dir, RunDir(run_dir).info.created).items():
        env.setdefault(name, value)  # the job's own, or the user's, wins
    return env


def node_share(target: str, run_dir: Path | None = None, env: dict | None = None) -> NodeShare:
    spec, run_dir = load_target(target, [], run_dir)
    env = dict(os.environ if env is None else env)
    environment = environment_for(spec, env)
    device = check_device(declared_device(spec), env)
    return NodeShare(
        spec,
        run_dir,
        device.kind,
        "agent" if spec.entry.agent else "worker",
        _nproc_per_node(spec, environment, device.count),
        environment.job_id(),
    )


def _nproc_per_node(spec: JobSpec, environment: ClusterEnvironment, visible: int) -> int:
    """nproc_per_node: auto is the devices this node gives the job (checked and counted from
    the node, see environments/devices.py); what the scheduler says it gave comes first."""
    n = spec.distributed.nproc_per_node
    if n != "auto":
        return n
    return environment.devices_on_node() or visible


def _checked(spec: JobSpec, nnodes: int, nproc_per_node: int) -> JobSpec:
    """The job with the topology this allocation really has, checked again (the job stays unchanged)."""
    real = with_world(spec, nnodes, nproc_per_node)
    problems = validate(real)
    if problems:
        raise UserError(problems)
    return real
