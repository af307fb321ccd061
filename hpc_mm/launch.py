"""Inside the allocation: environment -> plan -> command -> run, signals forwarded.

`resolve_plan` decides, for this process, the Megatron distributed arguments and the
backend; `launch` runs the entry point with them:
  - launcher `torchrun` (MindSpeed-MM's convention): this process is its node's agent and
    runs `torchrun --nproc_per_node --nnodes --node_rank --master_addr --master_port`;
    one scheduler task per node, so node rank = task rank.
  - launcher `srun`: this process is one training rank; it runs the entry with
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpc_mm import events
from hpc_mm.devices import detect_device, mpi_available
from hpc_mm.environments import ClusterEnvironment, MPIEnvironment, SlurmEnvironment, select_environment
from hpc_mm.errors import UserError
from hpc_mm.megatron import distributed_args, resolve_backend, training_argv
from hpc_mm.requeue import note_requeue_by_slurm
from hpc_mm.rundir import JOB_FILE
from hpc_mm.checkpoint import latest_iteration
from hpc_mm.spec import JobSpec, checkpoint_dir, load_job, validate

# Slurm's --signal and preemption send USR1/USR2 to us; Megatron's exit signal is SIGTERM.
FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM,
             signal.SIGUSR1: signal.SIGTERM, signal.SIGUSR2: signal.SIGTERM}


@dataclass
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
    spec: JobSpec | None = None
    run_dir: Path | None = None
    job_id: str | None = None
    restart_count: int = 0
    extra_env: dict = field(default_factory=dict)

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


def load_target(target: str | None, overrides: list[str] = (), run_dir: Path | None = None):
    """A run directory (holding job.yaml) or a job file -> (spec, run_dir)."""
    if target is None:
        return None, None
    path = Path(target)
    if path.is_dir():
        if not (path / JOB_FILE).exists():
            raise UserError.one(str(path), f"is not a run directory (no {JOB_FILE})",
                                "pass the run directory printed by submit/render, or a job file")
        return load_job(path / JOB_FILE, overrides), path.resolve()
    spec = load_job(path, overrides)
    from hpc_mm.spec import default_run_dir

    return spec, (run_dir or default_run_dir(spec)).resolve()


def resolve_plan(target: str | None = None, overrides: list[str] = (), run_dir: Path | None = None,
                 env: dict | None = None) -> Plan:
    spec, run_dir = load_target(target, overrides, run_dir)
    env = dict(os.environ if env is None else env)
    d = spec.distributed if spec else None
    environment = select_environment(
        env,
        master_port=d.master_port if d and isinstance(d.master_port, int) else None,
        master_addr=d.master_addr if d and d.master_addr != "localhost" else None,
        nnodes=spec.nnodes if spec else 1, node_rank=d.node_rank if d else 0)
    if isinstance(environment, MPIEnvironment):
        environment.agree()  # the one place MPI is initialised: only when asked to launch
    environment.check()
    device = detect_device(env)
    requested = d.backend if d else "auto"
    backend = resolve_backend(requested, device.kind, mpi_available() if requested == "mpi" else None)
    common = dict(environment=environment, master_addr=environment.main_address(),
                  master_port=environment.main_port(), backend=backend, device=device.kind,
                  hosts=environment.hosts(), spec=spec, run_dir=run_dir, job_id=environment.job_id(),
                  restart_count=environment.restart_count())
    agent = spec is not None and spec.entry.launcher == "torchrun" and environment.name != "torchrun"
    if agent:
        nproc = _nproc_per_node(spec, environment, device.count)
        nnodes, node_rank = environment.world_size(), environment.global_rank()
        return Plan(mode="agent", nnodes=nnodes, node_rank=node_rank, nproc_per_node=nproc,
                    world_size=nnodes * nproc, rank=None, local_rank=None, **common)
    return Plan(mode="worker", nnodes=environment.num_nodes(), node_rank=environment.node_rank(),
                nproc_per_node=environment.local_world_size(), world_size=environment.world_size(),
                rank=environment.global_rank(), local_rank=environment.local_rank(), **common)


def _nproc_per_node(spec: JobSpec, environment: ClusterEnvironment, visible: int) -> int:
    n = spec.distributed.nproc_per_node
    if n != "auto":
        return n
    if isinstance(environment, SlurmEnvironment) and environment.devices_on_node():
        return environment.devices_on_node()
    return visible


def command(plan: Plan) -> list[str]:
    spec = plan.spec
    argv = training_argv(spec, plan.run_dir, plan.device)
    target = ["-m", spec.entry.script] if not spec.entry.script.endswith(".py") else [spec.entry.script]
    python = spec.entry.python or sys.executable
    if plan.mode == "agent":
        return [python, "-m", "torch.distributed.run", *plan.distributed_args(), "--max-restarts", "0", *target, *argv]
    return [python, "-u", *target, *argv]


def child_env(plan: Plan) -> dict:
    env = dict(os.environ)
    env.update(plan.spec.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["HPC_MM_RUN_DIR"] = str(plan.run_dir)
    if plan.mode == "worker":
        env.update({"RANK": str(plan.rank), "WORLD_SIZE": str(plan.world_size), "LOCAL_RANK": str(plan.local_rank),
                    "LOCAL_WORLD_SIZE": str(plan.nproc_per_node), "GROUP_RANK": str(plan.node_rank),
                    "MASTER_ADDR": plan.master_addr, "MASTER_PORT": str(plan.master_port)})
    return env


def launch(target: str, overrides: list[str] = (), run_dir: Path | None = None) -> int:
    plan = resolve_plan(target, overrides, run_dir)
    spec = plan.spec
    _check_world(spec, plan)
    workdir = Path(spec.entry.workdir)
    if not workdir.is_dir():
        raise UserError.one("entry.workdir", f"{workdir} does not exist on {socket.gethostname()}",
                            "point it at your MindSpeed-MM checkout on the compute nodes")
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    leader = plan.node_rank == 0 and (plan.rank in (None, 0))
    cmd = command(plan)
    if leader:
        note_requeue_by_slurm(spec, plan.run_dir, plan.restart_count)
        events.record(plan.run_dir, "started", nnodes=plan.nnodes, world_size=plan.world_size,
                      master=f"{plan.master_addr}:{plan.master_port}", backend=plan.backend,
                      checkpoint=latest_iteration(checkpoint_dir(spec, plan.run_dir)))
    print(f"hpc-mm launch: {plan.environment.name} {plan.mode} node {plan.node_rank}/{plan.nnodes} "
          f"world {plan.world_size} master {plan.master_addr}:{plan.master_port} backend {plan.backend}",
          file=sys.stderr, flush=True)
    if plan.environment.name == "local" and plan.nnodes > 1 and leader:
        print(f"hpc-mm launch: waiting for the other {plan.nnodes - 1} node(s): run the same command on each "
              "with NODE_RANK=1.. and MASTER_ADDR set, or use `hpc-mm local` / `hpc-mm submit`",
              file=sys.stderr, flush=True)
    rc, received = _run_forwarding_signals(cmd, workdir, child_env(plan), to_workers=plan.mode == "agent")
    if leader:
        if received:  # the batch script's `hpc-mm finish` decides between requeued and failed
            events.record(plan.run_dir, "signal", name=signal.Signals(received).name, returncode=rc)
        else:
            events.record(plan.run_dir, "completed" if rc == 0 else "failed", returncode=rc)
    return rc


def _check_world(spec: JobSpec, plan: Plan) -> None:
    """Check the arithmetic again with the world size this allocation really has."""
    if spec.distributed.nproc_per_node == "auto":
        spec.distributed.nproc_per_node = plan.nproc_per_node
    spec.distributed.nnodes = plan.nnodes
    spec.slurm.nodes = plan.nnodes
    problems = validate(spec)
    if problems:
        raise UserError(problems)


def _ignore_user_signals() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil on compute nodes)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _run_forwarding_signals(cmd: list[str], cwd: Path, env: dict, to_workers: bool = False) -> tuple[int, int | None]:
    """Run `cmd`; forward the signals that stop a job, translated for Megatron. Return (rc, signal).

    Slurm delivers a step's signal to every process in it, not just to us. torchrun does not
    handle USR1/USR2 (their default action kills it and the ranks mid-iteration), so the child
    tree starts with them ignored and learns of the stop only as SIGTERM, from here.
    With `to_workers` (cmd is torchrun) SIGTERM goes to torchrun's workers: they save and exit 0,
    and torchrun ends cleanly instead of tearing the job down as failed.
    """
    child = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=_ignore_user_signals)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        targets = (_children(child.pid) if to_workers else []) or [child.pid]
        for pid in targets:
            try:
                os.kill(pid, FORWARDED[signum])
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return rc, (received[0] if received else None)
