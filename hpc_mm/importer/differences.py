"""What a node runs under hpc-mm against what the launch script ran, and the one table of reasons.

`node_command` is what `hpc-mm launch` runs on node N of a job (built by the same code, in an
allocation written out for it); `compare` sets it beside a traced launch of the script and names
every difference: the launcher's options, the entry, each argument, each variable. Every difference
hpc-mm makes on its own has its reason in DIFFERENCES (README: "What hpc-mm changes, and why"); a
difference without one is `unexplained`, which the corpus tests forbid.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.importer.launches import ACCELERATE_FLAGS, TOPOLOGY, TORCHRUN_FLAGS, flag_pairs, options
from hpc_mm.importer.trace import Command
from hpc_mm.importer.translate import TOPOLOGY_VARS

# The differences hpc-mm makes on its own, by what differs, with the reason (one table).
DIFFERENCES = {
    "topology": "the nodes, each node's rank and the master's address and port come from the allocation (Slurm), "
    "not from the script's one-node values or a hostfile",
    "logs": "every rank's output goes to the run directory's logs (msrun --log_dir, torchrun --tee/--redirects)",
    "agent": "torchrun is told --max-restarts 0 (hpc-mm restarts, inside the allocation or through the queue) and "
    "prefixes each line with its rank; msrun --join=True waits for the workers",
    "checkpoint": "--save and --load are the run's checkpoint folder (resume needs both); the script's --load of "
    "weights is --pretrained-checkpoint, loaded only while the run has no checkpoint of its own",
    "exit-signal": "--exit-signal-handler: the entry saves a checkpoint when Slurm stops it (preemption, time limit)",
    "explicit": "every value of the seed's table is passed explicitly (hpc-mm's defaults are the seed's, which "
    "differ from Megatron's for some)",
    "backend": "--distributed-backend from the device: nccl on NPUs and GPUs (MindSpeed maps it to hccl), gloo on CPUs",
    "timeouts": "the backends' own timeouts are set above the hang budget where the job does not set them "
    "(HCCL_EXEC_TIMEOUT, HCCL_CONNECT_TIMEOUT, --distributed-timeout-minutes, TORCH_NCCL_ASYNC_ERROR_HANDLING): "
    "the hang watchdog, not a collective's timeout, ends a hung step",
    "output": "PYTHONUNBUFFERED=1 and HPC_MM_RUN_DIR: hpc-mm reads the entry's output as it comes",
    "exact-resume": "flags that make a resumed run differ from an unbroken one (--no-save-optim, --no-load-rng, "
    "--finetune, ...) are dropped while requeue is on",
    "resume": "an entry that declares resume: gets resume.args at a start that finds its checkpoint",
    "accelerate": "accelerate's multi-process launcher (--multi_gpu) where no config file chooses one; "
    "ACCELERATE_USE_CPU=1 on CPU-only nodes",
    "mindspore": "--ai-framework mindspore for a Megatron entry under msrun (MindSpeed-MM on MindSpore)",
    "threads": "OMP_NUM_THREADS=1 per rank where srun starts several ranks a node (as torchrun does)",
    "megatron": "CUDA_DEVICE_MAX_CONNECTIONS=1 with TP or CP > 1 (Megatron asserts on it)",
    "ranks": "where srun starts each rank (no torchrun), hpc-mm gives it what torchrun would: RANK, WORLD_SIZE, "
    "LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT",
    "fsdp2-config": "the FSDP2 trainer reads the YAML hpc-mm writes into the run directory at every start: the "
    "job's file with its checkpoint folder, save interval and what to load set by hpc-mm",
    "batch": "a global batch of 0 (a script's arithmetic for a node count it was not run with: DP = 0) is derived "
    "instead, as micro batch x gradient accumulation x DP of the allocation",
    "ray": "verl's driver runs once, on the head of a Ray cluster hpc-mm forms across the nodes (a worker on every "
    "other node) when every node has joined; each node offers Ray its ranks (CPUs, GPUs, or NPU on Ascend)",
    "tensorboard": "--tensorboard-dir is the run's tensorboard/ folder where the script names none: every start's "
    "events in one folder, read by TensorBoard as one run",
    "trackers": "WANDB_RUN_ID, WANDB_NAME and WANDB_RESUME=allow (where unset): Weights & Biases sees every start of "
    "the run as one run",
    "secret": "a secret is never written into a job file or a batch script: export it in your shell before "
    "submitting (sbatch passes your environment to the job)",
}
# hpc-mm's own argument flags, by reason.
FLAG_REASONS = {
    "--save": "checkpoint", "--load": "checkpoint", "--pretrained-checkpoint": "checkpoint",
    "--exit-signal-handler": "exit-signal", "--distributed-backend": "backend",
    "--distributed-timeout-minutes": "timeouts", "--ai-framework": "mindspore", "--tensorboard-dir": "tensorboard",
}  # fmt: skip
ENV_REASONS = {
    "HCCL_EXEC_TIMEOUT": "timeouts", "HCCL_CONNECT_TIMEOUT": "timeouts", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "timeouts",
    "PYTHONUNBUFFERED": "output", "HPC_MM_RUN_DIR": "output", "ACCELERATE_USE_CPU": "accelerate",
    "OMP_NUM_THREADS": "threads", "CUDA_DEVICE_MAX_CONNECTIONS": "megatron", "RANK": "ranks", "WORLD_SIZE": "ranks",
    "LOCAL_RANK": "ranks", "LOCAL_WORLD_SIZE": "ranks", "GROUP_RANK": "ranks", "MASTER_ADDR": "ranks",
    "MASTER_PORT": "ranks", "WANDB_RUN_ID": "trackers", "WANDB_NAME": "trackers", "WANDB_RESUME": "trackers",
}  # fmt: skip
# (option names with dashes: `--log_dir` and `--log-dir` alike)
LAUNCHER_REASONS = {"--max-restarts": "agent", "--tee": "logs", "--join": "agent", "--log-dir": "logs",
                    "--multi-gpu": "accelerate"}  # fmt: skip
NODE_ENV_KEYS = ("SLURM_", "HPC_MM_RESTART")


@dataclass(frozen=True)
class NodeCommand:
    launcher: str  # torchrun, msrun, accelerate, or python (one rank)
    argv: list[str]  # as run, the launcher first (torchrun written as `torchrun`)
    env: dict[str, str | None]  # the variables hpc-mm sets or the job sets (None: unset)
    cwd: str
    plan: object


def allocation_env(nnodes: int, node: int, tasks_per_node: int, job_id: str = "1000") -> dict[str, str]:
    """The variables Slurm gives one task of node `node` in an allocation of `nnodes` nodes n1..nN."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": f"n[1-{nnodes}]" if nnodes > 1 else "n1",
        "SLURM_NNODES": str(nnodes),
        "SLURM_JOB_NUM_NODES": str(nnodes),
        "SLURM_NTASKS": str(nnodes * tasks_per_node),
        "SLURM_PROCID": str(node * tasks_per_node),
        "SLURM_NODEID": str(node),
        "SLURM_LOCALID": "0",
        "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nnodes})",
        "SLURMD_NODENAME": f"n{node + 1}",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def node_command(
    job: str,
    node: int,
    device: str | None = None,
    overrides: list[str] = (),
    nodes: int | None = None,
    run_dir: Path | None = None,
) -> NodeCommand:
    """What `hpc-mm launch` runs on node `node` (its first rank, where srun starts each rank), in the
    run directory `run_dir` (None: the one submit would make)."""
    from hpc_mm.errors import UserError
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.job.megatron import resolve_backend
    from hpc_mm.launch.command import TORCHRUN, child_env, command
    from hpc_mm.launch.plan import resolve_plan

    spec = load_job(Path(job), list(overrides), nodes)
    if not 0 <= node < spec.nnodes:
        raise UserError.one("--node", f"{node} is not a node of this {spec.nnodes}-node job", f"0..{spec.nnodes - 1}")
    per_node = 1 if spec.entry.agent else spec.distributed.nproc_per_node
    per_node = per_node if isinstance(per_node, int) else 1
    plan = resolve_plan(str(job), list(overrides), run_dir, allocation_env(spec.nnodes, node, per_node), nodes)
    kind = device or (spec.distributed.device if spec.distributed.device != "auto" else plan.device)
    plan = dataclasses.replace(plan, device=kind, backend=resolve_backend(spec.distributed.backend, kind))
    argv = command(plan, None)
    launcher = spec.entry.launcher if spec.entry.agent else "python"
    if TORCHRUN in argv:
        argv = ["torchrun", *argv[argv.index(TORCHRUN) + 1 :]]
    elif spec.entry.launcher == "accelerate":
        argv = ["accelerate", "launch", *argv[argv.index("accelerate.commands.launch") + 1 :]]
    env_all = child_env(plan, budget_seconds=float(spec.fault.hang_floor_step))
    base = plan.environment.env
    env: dict[str, str | None] = {
        k: v for k, v in env_all.items() if base.get(k) != v and not k.startswith(NODE_ENV_KEYS)
    }
    env.update({k: None for k, v in spec.env.items() if v is None})
    return NodeCommand(launcher, argv, env, spec.entry.workdir, plan)


def _split(argv: list[str], launcher: str) -> tuple[dict[str, str | None], str, list[str]]:
    """A launch as (the launcher's options, the entry, the entry's arguments)."""
    words = argv[1:]
    if launcher == "accelerate":
        words = words[1:]
    if launcher == "python":
        words = [w for w in words if w not in ("-u",)]
        if words[:1] == ["-m"]:
            words = words[1:]
        return {}, words[0] if words else "", words[1:]
    flags = (
        TORCHRUN_FLAGS + ("--no-python",)
        if launcher == "torchrun"
        else ACCELERATE_FLAGS
        if launcher == "accelerate"
        else ()
    )
    opts, rest = options(words, flags)
    return {name.replace("_", "-"): value for name, value, _ in opts}, rest[0] if rest else "", rest[1:]


def _same(a: list[str], b: list[str]) -> bool:
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        try:
            if not math.isclose(float(x), float(y), rel_tol=1e-12):
                return False
        except ValueError:
            if x != y and not (x.lower() in ("true", "1") and y.lower() in ("true", "1")):
                return False
    return True


def _same_paths(a: list[str], b: list[str], here: Path, there: str) -> bool:
    """The same files, one written relative to the script's folder, the other absolute."""
    return len(a) == len(b) and all(
        os.path.normpath(Path(here, x)) == os.path.normpath(Path(there, y)) for x, y in zip(a, b)
    )


def _words(values: list[str] | None) -> str:
    return "(absent)" if values is None else " ".join(values) or "(a flag)"


def compare(traced: Command, node: NodeCommand, kind: str) -> list[tuple[str, str | None]]:
    """Every difference between the traced launch and the node's, with its reason (None: unexplained)."""
    from hpc_mm.job.megatron import OWNED
    from hpc_mm.job.options import normal
    from hpc_mm.job.secrets import is_secret_name, looks_secret

    out: list[tuple[str, str | None]] = []
    t_launcher = "python" if traced.name in ("python", "python3") else traced.name
    if t_launcher == "python" and node.launcher == "ray":  # the driver, on the head of the cluster
        out.append(("launcher: python -> a Ray cluster, the driver on its head", "ray"))
        driver = node.argv[node.argv.index("--") + 1 :]
        if not driver:  # a worker node runs no driver
            return out
        node = dataclasses.replace(node, launcher="python", argv=driver)
    if t_launcher != node.launcher:
        out.append((f"launcher: {t_launcher} -> {node.launcher}", None))
        return out
    t_opts, t_script, t_args = _split(list(traced.argv), t_launcher)
    n_opts, n_script, n_args = _split(node.argv, node.launcher)
    topology = {k.replace("_", "-") for k in TOPOLOGY.get(node.launcher, {})}
    for name in sorted(set(t_opts) | set(n_opts)):
        if t_opts.get(name, "<absent>") == n_opts.get(name, "<absent>"):
            continue
        said = f"{node.launcher} {name}: {t_opts.get(name, '(absent)')} -> {n_opts.get(name, '(absent)')}"
        reason = LAUNCHER_REASONS.get(name) or ("topology" if name in topology else None)
        out.append((said, reason))
    if Path(traced.cwd, t_script).resolve() != Path(node.cwd, n_script).resolve() and t_script != n_script:
        out.append((f"entry: {t_script} -> {n_script}", None))
    if kind == "megatron":
        t_flags = {normal(f): v for f, v in flag_pairs(t_args) if f}
        n_flags = {normal(f): v for f, v in flag_pairs(n_args) if f}
        for flag in sorted(set(t_flags) | set(n_flags)):
            a, b = t_flags.get(flag), n_flags.get(flag)
            if a is not None and b is not None and (_same(a, b) or _same_paths(a, b, traced.cwd, node.cwd)):
                continue
            said = f"{flag}: {_words(a)} -> {_words(b)}"
            if flag == "--global-batch-size" and a == ["0"]:
                reason = "batch"
            elif flag in FLAG_REASONS:
                reason = FLAG_REASONS[flag]
            elif a is not None and b is None and flag in ("--no-save-optim", "--no-save-rng", "--no-load-optim",
                                                           "--no-load-rng", "--finetune"):  # fmt: skip
                reason = "exact-resume"
            elif a is None and flag in {normal(f) for f in OWNED}:
                reason = "explicit"
            else:
                reason = None
            out.append((said, reason))
    elif kind == "fsdp2" and t_args[1:] == n_args[1:] and n_args[:1] != t_args[:1]:
        out.append((f"the trainer's YAML: {' '.join(t_args[:1])} -> {' '.join(n_args[:1])}", "fsdp2-config"))
    elif not (_same(t_args, n_args) or _same_paths(t_args, n_args, traced.cwd, node.cwd)):
        extra = n_args[len(t_args) :] if n_args[: len(t_args)] == t_args else None
        out.append((f"arguments: {' '.join(t_args)} -> {' '.join(n_args)}", "resume" if extra else None))
    for name in sorted(set(traced.env) | set(node.env)):
        a, b = traced.env.get(name), node.env.get(name)
        if a == b or name.startswith(("HPC_MM_", "SLURM")) and name not in ENV_REASONS:
            continue
        if a is None:
            reason = ENV_REASONS.get(name)
        elif b is None and name in TOPOLOGY_VARS:  # the script's own layout variables: Slurm's now
            reason = "topology"
        elif b is None and (is_secret_name(name) or looks_secret(a)):
            reason, a = "secret", "(a secret)"
        else:
            reason = None
        out.append((f"${name}: {a if a is not None else '(unset)'} -> {b if b is not None else '(unset)'}", reason))
    return out
