"""The entry's command line and environment for this process's part of the job (its plan):
torchrun for a node's agent, the entry itself for one rank; the backends' own timeouts set above
the hang budget."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from hpc_mm.job.entries import contract
from hpc_mm.job.entries.base import Paths
from hpc_mm.launch import standby, warm
from hpc_mm.launch.plan import Plan, job_env
from hpc_mm.run import checkpoints, layout
from hpc_mm.run.atomic import write_atomic
from hpc_mm.run.checkpoints import latest_whole
from hpc_mm.run.layout import RANK_TIMES


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
    """The entry's command line for this process: its node's agent (torchrun, msrun, `accelerate
    launch`), or the entry itself as one rank; the entry's arguments from its contract (job/entries/)."""
    spec = plan.spec
    entry = contract(spec)
    argv = entry.argv(spec, start_paths(plan), plan.backend, plan.world_size, collective_timeout_minutes)
    target = [spec.entry.script] if spec.entry.program else entry.target(spec)
    own = spec.entry.launcher_args
    if plan.mode == "agent" and spec.entry.launcher == "msrun":
        return [*spec.entry.wrapper, "msrun", *msrun_args(plan), *own, *target, *argv]
    if plan.mode == "agent" and spec.entry.launcher == "ray":
        driver = (
            [*spec.entry.wrapper, *target, *argv] if spec.entry.program else [*interpreter(plan), "-u", *target, *argv]
        )
        return [
            *interpreter(plan),
            str(RAY_NODE),
            *ray_args(plan),
            *own,
            "--",
            *(driver if plan.node_rank == 0 else []),
        ]
    if plan.mode == "agent" and spec.entry.launcher == "accelerate":
        accelerate = [*interpreter(plan), "-m", "accelerate.commands.launch", *accelerate_args(plan)]
        return [*accelerate, *own, *(["--no_python"] if spec.entry.program else []), *target, *argv]
    standbys = warm.available(plan)
    if plan.mode == "agent":
        # An entry other than ours prints no rank: torchrun prefixes each line with its local rank.
        tee = [] if spec.builtin else ["--tee", "3"]
        # With standbys, torchrun and each of its workers start through the client (a standby, or a
        # cold start where none is ready): torchrun runs `python CLIENT TARGET ARGS` for each rank.
        workers = [spec.entry.python or sys.executable, str(standby.CLIENT)] if standbys else []
        return [
            *interpreter(plan),
            *([str(standby.CLIENT)] if standbys else []),
            "-c",
            TORCHRUN,
            *plan.distributed_args(),
            "--max-restarts",
            "0",
            *tee,
            *own,
            *(["--no-python"] if spec.entry.program or standbys else []),
            *workers,
            *target,
            *argv,
        ]
    if spec.entry.program:
        return [*spec.entry.wrapper, *target, *argv]
    return [*interpreter(plan), *([str(standby.CLIENT)] if standbys else ["-u"]), *target, *argv]


RAY_NODE = Path(__file__).resolve().parent / "ray_node.py"  # runs in the entry's interpreter (Ray's)


def ray_args(plan: Plan) -> list[str]:
    """This node's part of the Ray cluster: the head on node 0, a worker elsewhere; what each node offers
    Ray from the allocation (its ranks as CPUs, GPUs, or verl's NPU resource on Ascend)."""
    tag = plan.start.tag if plan.start else "local"
    offer = {"cpu": ["--num-cpus", str(plan.nproc_per_node)], "cuda": ["--num-gpus", str(plan.nproc_per_node)],
             "npu": ["--resources", json.dumps({"NPU": plan.nproc_per_node})]}[plan.device]  # fmt: skip
    return [
        "head" if plan.node_rank == 0 else "worker",
        "--address",
        f"{plan.master_addr}:{plan.master_port}",
        "--nodes",
        str(plan.nnodes),
        "--done",
        str(plan.run.ray_done_file(tag)),
        "--temp-dir",
        f"/tmp/hpc-mm-ray-{plan.job_id or 'local'}-{tag.rsplit('-', 1)[-1]}",
        *offer,
    ]


def start_paths(plan: Plan) -> Paths:
    """Where this start's files are; for an entry that keeps its own checkpoints (resume:), its newest."""
    board = layout.tensorboard_dir(plan.run_dir)
    if not plan.spec.resume.dir:
        return Paths(plan.run_dir, plan.checkpoint_dir, tensorboard_dir=board)
    found = checkpoints.declared(plan.checkpoint_dir, plan.spec.resume.pattern)
    return Paths(plan.run_dir, plan.checkpoint_dir, *(found or (None, None)), tensorboard_dir=board)


# accelerate chooses its distributed mode from its config file or these flags; without any, hpc-mm asks
# for its multi-process launcher (torchrun underneath) whenever the job has more than one process.
ACCELERATE_MODES = ("--config_file", "--multi_gpu", "--use_deepspeed", "--use_fsdp", "--use_megatron_lm", "--cpu")


def accelerate_args(plan: Plan) -> list[str]:
    """`accelerate launch` on this node, from the allocation (the user's own options, a config file
    among them, follow in entry.launcher_args and are kept)."""
    out = [
        "--num_machines",
        str(plan.nnodes),
        "--machine_rank",
        str(plan.node_rank),
        "--main_process_ip",
        plan.master_addr,
        "--main_process_port",
        str(plan.master_port),
        "--num_processes",
        str(plan.world_size),
    ]
    chosen = any(a.split("=", 1)[0] in ACCELERATE_MODES for a in plan.spec.entry.launcher_args)
    return out + (["--multi_gpu"] if plan.world_size > 1 and not chosen else [])


def msrun_args(plan: Plan) -> list[str]:
    """MindSpore's msrun for this node, from the same variables torchrun gets (its workers' own logs go
    into the run's log folder, one folder a start)."""
    logs = plan.run.msrun_logs(plan.start.tag if plan.start else "local")
    return [
        "--worker_num",
        str(plan.world_size),
        "--local_worker_num",
        str(plan.nproc_per_node),
        "--master_addr",
        plan.master_addr,
        "--master_port",
        str(plan.master_port),
        "--node_rank",
        str(plan.node_rank),
        f"--log_dir={logs}",
        "--join=True",
    ]


def write_start_files(plan: Plan) -> None:
    """What the entry reads at this start, written into the run directory by every node alike
    (atomically: a node reading it sees the whole file)."""
    entry = contract(plan.spec)
    paths = Paths(  # Megatron's layout
        plan.run_dir,
        plan.checkpoint_dir,
        latest_whole(plan.checkpoint_dir),
        tensorboard_dir=layout.tensorboard_dir(plan.run_dir),
    )
    for name, text in entry.start_files(plan.spec, paths).items():
        write_atomic(Path(plan.run_dir) / name, text)


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
        env.update(
            {k: v for k, v in collective_timeouts(plan.device, budget_seconds).items() if k not in plan.spec.env}
        )
    if plan.spec.entry.launcher == "accelerate" and plan.device == "cpu":
        env.setdefault("ACCELERATE_USE_CPU", "1")  # accelerate's processes on CPUs: gloo, not a device
    env = job_env(env, plan.spec, plan.run_dir)
    if plan.spec.fault.straggler_detection:
        env[RANK_TIMES] = "1"
    if warm.available(plan):
        env[standby.ENV] = warm.node_address(plan)
    if plan.mode == "worker":
        if plan.nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:
            # What torchrun does for several ranks a node: one thread each (or the CPUs Slurm
            # gave the task), not every core each, which oversubscribes the node many times over.
            env["OMP_NUM_THREADS"] = env.get("SLURM_CPUS_PER_TASK") or "1"
        env.update(
            {
                "RANK": str(plan.rank),
                "WORLD_SIZE": str(plan.world_size),
                "LOCAL_RANK": str(plan.local_rank),
                "LOCAL_WORLD_SIZE": str(plan.nproc_per_node),
                "GROUP_RANK": str(plan.node_rank),
                "MASTER_ADDR": plan.master_addr,
                "MASTER_PORT": str(plan.master_port),
            }
        )
    return env
