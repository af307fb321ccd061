"""Job spec -> the MindSpeed-MM / Megatron command line, and backend translation.

Backend translation (the seed's printed GPU/NPU row is swapped; this is the corrected one):

    device  auto picks  on the Megatron command line
    npu     hccl        --distributed-backend nccl   (MindSpeed maps nccl to hccl at init)
    cuda    nccl        --distributed-backend nccl
    cpu     gloo        --distributed-backend gloo
    (mpi only where torch.distributed.is_mpi_available(); Megatron's parser refuses it)

Every value is passed explicitly, since Megatron's defaults differ from the seed's.
This module never imports torch: it runs on login nodes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec, derive

DEVICE_BACKEND = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
BACKEND_DEVICE = {"hccl": "npu", "nccl": "cuda", "gloo": "cpu"}


def device_hint(spec: JobSpec) -> str:
    """The device a job will run on, as far as a login node can tell from the job file."""
    gres = (spec.slurm.gres or "").split(":")[0]
    if gres == "npu":
        return "npu"
    if gres == "gpu":
        return "cuda"
    return BACKEND_DEVICE.get(spec.distributed.backend, "cpu")


def resolve_backend(requested: str, device: str, mpi_available: bool | None = None) -> str:
    """The process-group backend that will actually run."""
    if requested == "auto":
        return DEVICE_BACKEND[device]
    if requested == "mpi" and mpi_available is False:
        raise UserError.one("distributed.backend", "mpi: this PyTorch was built without MPI",
                            "use auto (gloo on CPU) or a PyTorch built from source with MPI")
    if requested in BACKEND_DEVICE and BACKEND_DEVICE[requested] != device and requested != "gloo":
        raise UserError.one("distributed.backend", f"{requested} needs a {BACKEND_DEVICE[requested]} device, "
                            f"but this node has {device}", "use auto")
    return requested


def command_line_backend(backend: str) -> str:
    """What goes after --distributed-backend: Megatron accepts only nccl or gloo."""
    return "nccl" if backend == "hccl" else backend


def login_backend(spec: JobSpec) -> str:
    """The backend as far as a login node can tell (the launcher resolves it on the node)."""
    return resolve_backend(spec.distributed.backend, device_hint(spec))


def training_argv(spec: JobSpec, *, run_dir: Path, checkpoint_dir: Path, backend: str,
                  world_size: int | None = None) -> list[str]:
    """The arguments the entry point receives: GPT_ARGS, MM_ARGS, OUTPUT_ARGS, backend.

    `backend` is the one that will run (resolved once, by the launcher's plan or
    `login_backend`); `world_size`, when known, fills in a derived global batch size.
    """
    g = spec.gpt
    gbs = g.global_batch_size or derive(spec, world_size).global_batch_size
    ckpt = str(checkpoint_dir)
    argv: list[str] = []
    if g.use_mcore_models:
        argv.append("--use-mcore-models")
    argv += [
        "--tensor-model-parallel-size", str(g.tensor_model_parallel_size),
        "--pipeline-model-parallel-size", str(g.pipeline_model_parallel_size),
        "--context-parallel-size", str(g.context_parallel_size),
        "--micro-batch-size", str(g.micro_batch_size),
    ]
    if gbs:  # unknown only with nproc_per_node: auto, where launch fills it in
        argv += ["--global-batch-size", str(gbs)]
    argv += [
        "--num-workers", str(g.num_workers),
        "--lr", _num(g.lr),
        "--min-lr", _num(g.min_lr),
        "--adam-beta1", _num(g.adam_beta1),
        "--adam-beta2", _num(g.adam_beta2),
        "--adam-eps", _num(g.adam_eps),
        "--lr-decay-style", g.lr_decay_style,
        "--weight-decay", _num(g.weight_decay),
        "--lr-warmup-init", _num(g.lr_warmup_init),
        "--lr-warmup-iters", str(g.lr_warmup_iters),
        "--clip-grad", _num(g.clip_grad),
        "--train-iters", str(g.train_iters),
        "--seed", str(g.seed),
        "--log-interval", str(g.log_interval),
    ]
    if g.lr_decay_iters:
        argv += ["--lr-decay-iters", str(g.lr_decay_iters)]
    if g.lr_decay_style == "WSD":
        argv += ["--lr-wsd-decay-style", g.lr_wsd_decay_style, "--lr-wsd-decay-iters", str(g.lr_wsd_decay_iters)]
    argv += _extra_flags(g.extra)
    argv += ["--mm-data", spec.mm.data, "--mm-model", spec.mm.model, "--mm-tool", spec.mm.tool]
    argv += ["--save", ckpt, "--load", ckpt, "--save-interval", str(spec.checkpoint.save_interval),
             "--exit-signal-handler"]
    argv += ["--distributed-backend", command_line_backend(backend)]
    if spec.builtin:  # options of the built-in trainer only; Megatron would refuse them
        argv += ["--run-dir", str(Path(run_dir).resolve())]
        if spec.checkpoint.keep_last:
            argv += ["--keep-last", str(spec.checkpoint.keep_last)]
        if spec.checkpoint.async_save:
            argv.append("--async-save")
    argv += spec.entry.extra_args
    return argv


def distributed_args(nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> list[str]:
    """torchrun's DISTRIBUTED_ARGS, spelled as MindSpeed-MM's scripts spell them."""
    return ["--nproc_per_node", str(nproc_per_node), "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--master_addr", master_addr, "--master_port", str(master_port)]


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _extra_flags(extra: dict) -> list[str]:
    out: list[str] = []
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [flag, _num(value) if isinstance(value, float) else str(value)]
    return out


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))
