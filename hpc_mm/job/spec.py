"""The typed job: one frozen dataclass per job-file section, and the figures derived from it.

Keys are the seed's argument names (MindSpeed-MM's training-argument table) with dashes
written as underscores. Defaults are the seed's, not Megatron's (they differ for weight
decay and num-workers), and every value is passed explicitly on the command line.
A `JobSpec` is built once by `jobfile.load_job` and never changed afterwards; code that
needs a variant (the launcher, with the world size the allocation really has) makes a
copy with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from hpc_mm.job.coerce import REQUIRED
from hpc_mm.job.declare import option
from hpc_mm.job.sections import Notify, Throughput
from hpc_mm.job.signals import DEFAULT_STOP_SIGNAL
from hpc_mm.names import STOP_SIGNALS

# msrun: MindSpore's launcher (MindSpeed-MM's MindSpore examples); accelerate: Hugging Face's `accelerate
# launch` (diffusers, DiffSynth); ray: a Ray cluster across the nodes and the entry run once on its head
# (verl's GRPO driver)
Launcher = Literal["torchrun", "srun", "msrun", "accelerate", "ray"]
# What the entry is (job/entries/): Megatron arguments (pretrain_vlm.py, pretrain_sora.py, ...), the
# FSDP2 trainer driven by one YAML file, or any other command; auto: recognised from entry.script.
EntryKind = Literal["auto", "megatron", "fsdp2", "command"]
# The MindSpeed-MM releases whose option tables hpc-mm ships (job/options.py, job/fsdp2.py).
Release = Literal["2.2.0", "2.3.0", "26.0.0", "26.1.0"]
LATEST_RELEASE = "26.1.0"
Backend = Literal["auto", "hccl", "nccl", "gloo", "mpi"]
Device = Literal["auto", "npu", "cuda", "cpu"]
DecayStyle = Literal["constant", "linear", "cosine", "inverse-square-root", "WSD"]
# core_v0.12 (the Megatron MindSpeed-MM pins) knows these three; newer ones add minus_sqrt.
WsdDecayStyle = Literal["exponential", "linear", "cosine"]
Signal = Literal[STOP_SIGNALS]

BUILTIN_TRAINER = "hpc_mm.train"
SEED_TOOLS_JSON = "./mindspeed_mm/tools/tools.json"


# The launchers that run one agent a node, which starts the ranks.
AGENTS = ("torchrun", "msrun", "accelerate", "ray")
WARM_LAUNCHERS = ("torchrun", "srun")  # whose processes a standby interpreter can stand in for (launch/standby.py)
# What each agent is told by hpc-mm, from the allocation: entry.launcher_args may not set these.
LAUNCHER_OWNS = {
    "torchrun": ("--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank", "--master_addr",
                 "--master-addr", "--master_port", "--master-port", "--rdzv_endpoint", "--rdzv-endpoint",
                 "--rdzv_backend", "--rdzv-backend", "--standalone", "--max_restarts", "--max-restarts"),
    "msrun": ("--worker_num", "--local_worker_num", "--master_addr", "--master_port", "--node_rank", "--log_dir",
              "--join"),
    "accelerate": ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port",
                   "--num_processes"),
    "ray": ("--head", "--address", "--port", "--node-ip-address", "--block", "--temp-dir"),
    "srun": (),
}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    script: str = BUILTIN_TRAINER
    workdir: str = "."
    launcher: Launcher = "torchrun"
    python: Optional[str] = None  # default: the Python that runs `hpc-mm launch` on the node
    extra_args: list[str] = field(default_factory=list)
    wrapper: list[str] = field(default_factory=list)  # command prefix: apptainer exec IMAGE, ...
    kind: EntryKind = "auto"
    # fsdp2: the trainer's YAML file; megatron: the --fsdp2-config-path file (FSDP2 settings)
    config: Optional[str] = None
    mindspeed_mm: Release = LATEST_RELEASE  # the release the entry is from: its option tables check the job
    save_on_signal: bool = False  # fsdp2: run the trainer through hpc-mm's adapter, which saves on a stop
    # the launcher's own options, placed before the entry (msrun --bind_core=True, accelerate --config_file
    # F.yaml); not those hpc-mm sets from the allocation (LAUNCHER_OWNS)
    launcher_args: list[str] = field(default_factory=list)
    # the script is a program of its own (a binary, a shell script), run without Python
    program: bool = False
    # where workdir is in a git checkout: its code as submitted is copied into the run; every start runs it
    snapshot: bool = True

    @property
    def agent(self) -> bool:
        """One launcher agent a node (torchrun, msrun) that starts the node's ranks; srun starts each rank."""
        return self.launcher in AGENTS


@dataclass(frozen=True)
class Slurm:
    nodes: Optional[int] = field(default=None, metadata={"at_least": 1, "arithmetic": True})  # or distributed.nnodes
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "01:00:00"
    gres: Optional[str] = None
    gpus_per_node: Optional[str] = None  # --gpus-per-node: N or TYPE:N
    cpus_per_task: Optional[int] = field(default=None, metadata={"at_least": 1})
    mem: Optional[str] = None
    exclusive: bool = False
    constraint: Optional[str] = None
    extra_sbatch: dict[str, Union[str, int, bool]] = field(default_factory=dict)
    srun_args: list[str] = field(default_factory=list)  # added to the training step's srun (pyxis, ...)
    python: Optional[str] = None  # runs `hpc-mm launch`/`finish` on the nodes; default: the one that rendered
    # nodes held beyond the ones training uses: a node blamed for a fault is replaced by one of them
    spare_nodes: int = field(default=0, metadata={"at_least": 0})


@dataclass(frozen=True)
class Distributed:
    nproc_per_node: Union[int, Literal["auto"]] = field(default=1, metadata={"arithmetic": True})
    nnodes: Optional[int] = field(default=None, metadata={"at_least": 1, "arithmetic": True})  # or slurm.nodes
    node_rank: int = 0
    master_addr: str = "localhost"
    master_port: Union[int, Literal["auto"]] = "auto"
    backend: Backend = option("--distributed-backend", "auto")
    device: Device = "auto"  # auto: from slurm.gres (npu:N -> npu, gpu:N -> cuda), else what the node has


@dataclass(frozen=True)
class MM:
    data: Optional[str] = option(
        "--mm-data", None, required_for=("megatron",), hint="path of the mm-data JSON (dataset_param, dataloader_param)"
    )
    model: Optional[str] = option("--mm-model", None, required_for=("megatron",), hint="path of the mm-model JSON")
    tool: Optional[str] = option("--mm-tool", None)  # seed default: ./mindspeed_mm/tools/tools.json in entry.workdir


@dataclass(frozen=True)
class GPT:
    use_mcore_models: bool = option("--use-mcore-models", True)
    tensor_model_parallel_size: int = option("--tensor-model-parallel-size", 1, at_least=1, arithmetic=True)
    pipeline_model_parallel_size: int = option("--pipeline-model-parallel-size", 1, at_least=1, arithmetic=True)
    context_parallel_size: int = option("--context-parallel-size", 1, at_least=1, arithmetic=True)
    micro_batch_size: int = option("--micro-batch-size", 1, at_least=1, arithmetic=True)
    global_batch_size: Optional[int] = option("--global-batch-size", None, at_least=1, arithmetic=True)  # MBS*GA*DP
    # hpc-mm only (no flag): used to derive global_batch_size
    gradient_accumulation_steps: int = field(default=1, metadata={"at_least": 1, "arithmetic": True})
    num_workers: int = option("--num-workers", 1, at_least=0)
    lr: Optional[float] = option(
        "--lr", None, required_for=("megatron",), hint="the maximum learning rate, e.g. `lr: 1.0e-5`"
    )
    min_lr: float = option("--min-lr", 0.0, at_least=0)
    adam_beta1: float = option("--adam-beta1", 0.9)
    adam_beta2: float = option("--adam-beta2", 0.999)
    adam_eps: float = option("--adam-eps", 1e-8)
    lr_decay_style: DecayStyle = option("--lr-decay-style", "linear")
    lr_decay_iters: Optional[int] = option("--lr-decay-iters", None, at_least=1, arithmetic=True)  # default train_iters
    weight_decay: float = option("--weight-decay", 0.1, at_least=0)
    lr_warmup_init: float = option("--lr-warmup-init", 0.0, at_least=0)
    lr_warmup_iters: int = option("--lr-warmup-iters", 0, at_least=0, arithmetic=True)
    lr_wsd_decay_style: WsdDecayStyle = option(
        "--lr-wsd-decay-style", "exponential", only_with=("lr_decay_style", "WSD")
    )
    lr_wsd_decay_iters: Optional[int] = option(
        "--lr-wsd-decay-iters", None, at_least=1, arithmetic=True, only_with=("lr_decay_style", "WSD")
    )
    clip_grad: float = option("--clip-grad", 1.0, at_least=0)
    # fsdp2: training.train_iters of its YAML, unless given here
    train_iters: Optional[int] = option(
        "--train-iters",
        None,
        at_least=1,
        arithmetic=True,
        required_for=("megatron",),
        hint="number of training iterations",
    )
    seed: int = option("--seed", 1234)
    log_interval: int = option("--log-interval", 1, at_least=1)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    dir: Optional[str] = option(("--save", "--load"), None)  # default: <run dir>/checkpoints
    # iterations, or auto: chosen at every start from the measured save time and failure rate (run/interval.py)
    save_interval: Union[int, Literal["auto"]] = option("--save-interval", 100, at_least=1)
    keep_last: Optional[int] = field(
        default=2, metadata={"at_least": 1, "bound_hint": "leave it unset (null) to keep every checkpoint"}
    )
    async_save: bool = False
    # weights to start from while dir holds no checkpoint
    pretrained: Optional[str] = option("--pretrained-checkpoint", None)


@dataclass(frozen=True)
class Resume:
    """How an entry hpc-mm does not drive resumes from its own checkpoints (an `accelerate launch` script,
    verl, any command that trains): with `dir` set, a preemption costs it at most `every` steps, not the
    whole run, and it is requeued like a trainer."""

    dir: Optional[str] = None  # where the entry writes its checkpoints (relative: to entry.workdir)
    pattern: str = r"checkpoint-(\d+)"  # a checkpoint's name in dir; its first group is the step
    # added to the entry's arguments at a start that finds a checkpoint in dir ({checkpoint}: its path,
    # {step}: its step), e.g. [--resume_from_checkpoint, latest] or [trainer.resume_mode=auto]
    args: list[str] = field(default_factory=list)
    every: Optional[int] = field(default=None, metadata={"at_least": 1})  # steps between its saves
    steps: Optional[int] = field(default=None, metadata={"at_least": 1})  # the step training ends at


@dataclass(frozen=True)
class Requeue:
    enabled: Optional[bool] = None  # default: on for entries that train, off for a command
    mode: Literal["requeue", "chain"] = (
        "requeue"  # chain: a new job (--dependency=singleton) where requeue is forbidden
    )
    # hpc-mm always passes --exit-signal-handler: every stop reaches the ranks as its signal
    signal: Signal = option("--exit-signal-handler", DEFAULT_STOP_SIGNAL)
    grace_seconds: int = 120
    max_restarts: int = field(default=3, metadata={"at_least": 0})  # after a time limit, a hang, a manual stop
    on_failure: int = field(default=0, metadata={"at_least": 0})  # requeues after a crash (non-zero exit, no signal)
    # starts in a row that move no checkpoint: then the job stops
    max_restarts_without_progress: int = field(default=3, metadata={"at_least": 1})
    # after a crash, a hang, a failed preflight or a dead node: start again inside the allocation
    # (without the nodes to blame, on a spare if there is one) instead of going back through the queue
    inside: bool = True
    # keep standby interpreters on every node of the allocation (the entry's heavy modules imported),
    # so that a start inside it skips the interpreter and the imports (launch/standby.py)
    warm_standby: bool = True
    # modules the standbys import besides the device's (torch, torch_npu) and the entry kind's own
    preload: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    """Hangs, sick nodes and the checks before training (see launch/watchdog.py, launch/preflight.py)."""

    preflight: bool = True  # a short step on every node before training starts
    quarantine: bool = True  # exclude a node blamed for a hang, a node failure or a failed preflight
    hang_detection: bool = True
    hang_factor: float = 10.0  # a phase may take this many times its observed p99 ...
    # ... and never less than these seconds: start-up to the first iteration, from one logged iteration to the
    # next, a checkpoint save
    hang_floor_startup: int = field(default=900, metadata={"at_least": 1, "bound_hint": "seconds"})
    hang_floor_step: int = field(default=180, metadata={"at_least": 1, "bound_hint": "seconds"})
    hang_floor_checkpoint: int = field(default=600, metadata={"at_least": 1, "bound_hint": "seconds"})
    # A line of the entry's output that means it moved on (a regular expression; a group named `it`, or the
    # first group, may hold the step): for entries whose progress hpc-mm does not know. Without it such an
    # entry is judged by liveness only (output, CPU time or $HPC_MM_PROGRESS_FILE moving).
    progress_pattern: Optional[str] = None
    # Megatron's collective timeout: by default set above the hang budget (the watchdog ends a hung step)
    collective_timeout_minutes: Optional[int] = option("--distributed-timeout-minutes", None, at_least=1)
    # mean time between failures of this job (hours), for save_interval: auto and `hpc-mm goodput`
    mtbf_hours: Optional[float] = field(default=None, metadata={"at_least": 0.001})
    # a rank whose own compute time per step is this fraction above the others' (median over the last
    # straggler_window steps) for straggler_steps steps in a row is named (status, an event, notify:)
    straggler_detection: bool = True
    straggler_threshold: float = field(default=0.3, metadata={"at_least": 0.01})
    straggler_window: int = field(default=10, metadata={"at_least": 1})
    straggler_steps: int = field(default=8, metadata={"at_least": 1})
    # leave a named straggler's node out at the next restart inside the allocation, where a spare can
    # take its place
    straggler_exclude: bool = False


@dataclass(frozen=True)
class JobSpec:
    name: str = field(default=REQUIRED, metadata={"hint": "a short job name such as `qwen2vl-7b`"})
    entry: Entry = field(default_factory=Entry)
    slurm: Slurm = field(default_factory=Slurm)
    distributed: Distributed = field(default_factory=Distributed)
    mm: MM = field(default_factory=MM)
    gpt: GPT = field(default_factory=GPT)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    requeue: Requeue = field(default_factory=Requeue)
    fault: Fault = field(default_factory=Fault)
    env: dict[str, Optional[str]] = field(default_factory=dict)  # a null value: unset in the entry's environment
    setup: list[str] = field(default_factory=list)
    # shell lines run once, on the first node, after the step, whatever its exit status (which the job keeps)
    post: list[str] = field(default_factory=list)
    resume: Resume = field(default_factory=Resume)
    # fsdp2: keys of the trainer's YAML (entry.config) to set, as its sections nest them
    config: dict[str, Any] = field(default_factory=dict)
    # a pipeline's stage: start only once these ended well (Slurm's afterok): job ids, run
    # directories, or names of earlier stages of the same `hpc-mm submit A.yaml B.yaml ...`
    after: list[str] = field(default_factory=list)
    notify: Notify = field(default_factory=Notify)
    throughput: Throughput = field(default_factory=Throughput)
    source: str = field(default="", metadata={"internal": True})

    @property
    def nnodes(self) -> int:
        """The number of nodes: slurm.nodes or distributed.nnodes, whichever is given (they must agree)."""
        return self.distributed.nnodes or self.slurm.nodes or 1

    @property
    def builtin(self) -> bool:
        return self.entry.script == BUILTIN_TRAINER

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def with_world(spec: JobSpec, nnodes: int, nproc_per_node: int) -> JobSpec:
    """A copy of the job with the topology an allocation really has (for checks at launch)."""
    return dataclasses.replace(
        spec,
        slurm=dataclasses.replace(spec.slurm, nodes=nnodes),
        distributed=dataclasses.replace(spec.distributed, nnodes=nnodes, nproc_per_node=nproc_per_node),
    )


@dataclass(frozen=True)
class Derived:
    """Figures that follow from the job: the arithmetic users used to do by hand."""

    world_size: Optional[int]
    data_parallel_size: Optional[int]
    global_batch_size: Optional[int]
    gradient_accumulation_steps: Optional[int]  # micro-batches per step on each DP rank
    micro_batches_per_step: Optional[int]  # across all DP ranks


def gres_count(gres: str | None) -> int | None:
    """Devices per node from a gres such as ``npu:8`` or ``gpu:a100:4``, or a --gpus-per-node
    value such as ``8`` or ``a100:4``."""
    if not gres:
        return None
    last = gres.split(",")[0].split(":")[-1]
    return int(last) if last.isdigit() else None


def devices_requested(spec: JobSpec) -> int | None:
    """Accelerators per node the job asks Slurm for (slurm.gres or slurm.gpus_per_node)."""
    return gres_count(spec.slurm.gres) or gres_count(spec.slurm.gpus_per_node)


def nproc_hint(spec: JobSpec) -> int | None:
    n = spec.distributed.nproc_per_node
    return n if isinstance(n, int) else devices_requested(spec)


def model_parallel_size(gpt: GPT) -> int:
    return gpt.tensor_model_parallel_size * gpt.pipeline_model_parallel_size * gpt.context_parallel_size


def derive(spec: JobSpec, world_size: int | None = None) -> Derived:
    """The derived figures; None where they cannot be known yet, or where an input is invalid
    (the rules report that input; nothing here divides by it)."""
    gpt = spec.gpt
    if world_size is None:
        nproc = nproc_hint(spec)
        world_size = spec.nnodes * nproc if nproc else None
    model_parallel = model_parallel_size(gpt)
    if (
        not world_size
        or world_size < 1
        or model_parallel < 1
        or gpt.micro_batch_size < 1
        or gpt.gradient_accumulation_steps < 1
        or world_size % model_parallel
    ):
        return Derived(world_size, None, gpt.global_batch_size, None, None)
    dp = world_size // model_parallel
    gbs = gpt.global_batch_size or gpt.micro_batch_size * gpt.gradient_accumulation_steps * dp
    per_step = gbs // gpt.micro_batch_size if gbs % gpt.micro_batch_size == 0 else None
    grad_acc = gbs // (gpt.micro_batch_size * dp) if gbs % (gpt.micro_batch_size * dp) == 0 else None
    return Derived(world_size, dp, gbs, grad_acc, per_step)


def keeps_standbys(spec: JobSpec) -> bool:
    """Does the job keep standby interpreters for its restarts inside the allocation (launch/standby.py)?
    A Python entry under a launcher whose processes a standby can stand in for."""
    entry = spec.entry
    return bool(
        spec.requeue.warm_standby and spec.requeue.inside and entry.launcher in WARM_LAUNCHERS and not entry.program
    )
