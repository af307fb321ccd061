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

import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.environments import ClusterEnvironment, select_environment
from hpc_mm.environments.devices import check_device, mpi_available
from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.megatron import declared_device, distributed_args, resolve_backend, training_argv
from hpc_mm.job.rules import validate
from hpc_mm.job.spec import JobSpec, with_world
from hpc_mm.run import layout


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

    def distributed_args(self) -> list[str]:
        return distributed_args(self.nproc_per_node, self.nnodes, self.node_rank, self.master_addr, self.master_port)

    def describe(self) -> dict:
        return {"launcher": self.environment.name, "mode": self.mode, "job_id": self.job_id,
                "nnodes": self.nnodes, "node_rank": self.node_rank, "nproc_per_node": self.nproc_per_node,
                "world_size": self.world_size, "rank": self.rank, "local_rank": self.local_rank,
                "master_addr": self.master_addr, "master_port": self.master_port, "backend": self.backend,
                "device": self.device, "hosts": self.hosts, "restart_count": self.restart_count,
                "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
                "distributed_args": " ".join(self.distributed_args())}


def load_target(target: str | None, overrides: list[str] = (), run_dir: Path | None = None,
                nodes: int | None = None, nproc_per_node: int | str | None = None):
    """A run directory (holding job.yaml) or a job file -> (spec, run_dir); (None, None) without one."""
    if target is None:
        return None, None
    path = Path(target)
    if path.is_dir():
        if not layout.is_run_dir(path):
            raise UserError.one(str(path), f"is not a run directory (no {layout.JOB_FILE})",
                                "pass the run directory printed by submit/render, or a job file")
        return load_job(path / layout.JOB_FILE, overrides, nodes, nproc_per_node), path.resolve()
    spec = load_job(path, overrides, nodes, nproc_per_node)
    return spec, Path(run_dir or layout.default_run_dir(spec)).resolve()


def resolve_plan(target: str | None = None, overrides: list[str] = (), run_dir: Path | None = None,
                 env: dict | None = None, nodes: int | None = None, nproc_per_node: int | str | None = None) -> Plan:
    spec, run_dir = load_target(target, overrides, run_dir, nodes, nproc_per_node)
    env = dict(os.environ if env is None else env)
    d = spec.distributed if spec else None
    environment = select_environment(
        env,
        master_port=d.master_port if d and isinstance(d.master_port, int) else None,
        master_addr=d.master_addr if d and d.master_addr != "localhost" else None,
        nnodes=spec.nnodes if spec else 1, node_rank=d.node_rank if d else 0)
    environment.prepare()
    environment.check()
    device = check_device(declared_device(spec) if spec else None, env)
    requested = d.backend if d else "auto"
    backend = resolve_backend(requested, device.kind, mpi_available() if requested == "mpi" else None)
    common = dict(environment=environment, master_addr=environment.main_address(),
                  master_port=environment.main_port(), backend=backend, device=device.kind,
                  hosts=environment.hosts(), run_dir=run_dir, job_id=environment.job_id(),
                  restart_count=environment.restart_count())
    if spec is not None and spec.entry.launcher == "torchrun" and environment.name != "torchrun":
        nproc = _nproc_per_node(spec, environment, device.count)
        nnodes, node_rank = environment.world_size(), environment.global_rank()
        return Plan(mode="agent", nnodes=nnodes, node_rank=node_rank, nproc_per_node=nproc,
                    world_size=nnodes * nproc, rank=None, local_rank=None,
                    spec=_checked(spec, nnodes, nproc), **common)
    nnodes, nproc = environment.num_nodes(), environment.local_world_size()
    return Plan(mode="worker", nnodes=nnodes, node_rank=environment.node_rank(), nproc_per_node=nproc,
                world_size=environment.world_size(), rank=environment.global_rank(),
                local_rank=environment.local_rank(), spec=spec and _checked(spec, nnodes, nproc), **common)


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


def interpreter(plan: Plan) -> list[str]:
    """The entry's interpreter, behind its wrapper (apptainer exec IMAGE, ...)."""
    return [*plan.spec.entry.wrapper, plan.spec.entry.python or sys.executable]


# torchrun, ending as soon as its agent is done: the interpreter's own teardown of torch takes
# about half a second of a stopping job's grace on every node and does nothing durable (the
# workers have exited, their checkpoint is committed). Runs in the entry's interpreter (which
# need not have hpc-mm), so it is code, not a module of ours; its exit status is torchrun's.
TORCHRUN = """# torchrun (hpc-mm: no interpreter teardown after the agent)
import os, sys
from torch.distributed.run import main
sys.argv[0] = "torchrun"
try:
    main()
    rc = 0
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)
"""


def command(plan: Plan, collective_timeout_minutes: int | None = None) -> list[str]:
    spec = plan.spec
    argv = training_argv(spec, run_dir=plan.run_dir, checkpoint_dir=plan.checkpoint_dir, backend=plan.backend,
                         world_size=plan.world_size, collective_timeout_minutes=collective_timeout_minutes)
    target = ["-m", spec.entry.script] if not spec.entry.script.endswith(".py") else [spec.entry.script]
    if plan.mode == "agent":
        # An entry other than ours prints no rank: torchrun prefixes each line with its local rank.
        tee = [] if spec.builtin else ["--tee", "3"]
        return [*interpreter(plan), "-c", TORCHRUN, *plan.distributed_args(), "--max-restarts", "0",
                *tee, *target, *argv]
    return [*interpreter(plan), "-u", *target, *argv]


def collective_timeouts(device: str, budget_seconds: float) -> dict:
    """The backends' own timeouts, set above the hang budget (so the watchdog ends a hung step),
    where the job does not set them: HCCL's execution timeout (whole steps of 68 s, at most 17340 s)
    and its connect timeout on NPUs; error handling that makes NCCL's timeout abort on GPUs."""
    if device == "npu":
        execution = min(17340, 68 * math.ceil(2 * budget_seconds / 68))
        return {"HCCL_EXEC_TIMEOUT": str(execution), "HCCL_CONNECT_TIMEOUT": str(min(7200, max(120, execution)))}
    if device == "cuda":
        return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    return {}


def child_env(plan: Plan, budget_seconds: float | None = None) -> dict:
    env = dict(plan.environment.env)
    if budget_seconds and plan.spec.fault.hang_detection:
        env.update({k: v for k, v in collective_timeouts(plan.device, budget_seconds).items() if k not in plan.spec.env})
    env.update(plan.spec.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["HPC_MM_RUN_DIR"] = str(plan.run_dir)
    if plan.mode == "worker":
        if plan.nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:
            # What torchrun does for several ranks a node: one thread each (or the CPUs Slurm
            # gave the task), not every core each, which oversubscribes the node many times over.
            env["OMP_NUM_THREADS"] = env.get("SLURM_CPUS_PER_TASK") or "1"
        env.update({"RANK": str(plan.rank), "WORLD_SIZE": str(plan.world_size), "LOCAL_RANK": str(plan.local_rank),
                    "LOCAL_WORLD_SIZE": str(plan.nproc_per_node), "GROUP_RANK": str(plan.node_rank),
                    "MASTER_ADDR": plan.master_addr, "MASTER_PORT": str(plan.master_port)})
    return env
