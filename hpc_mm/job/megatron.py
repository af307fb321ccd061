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
from hpc_mm.job.options import normal, table
from hpc_mm.job.schema import flags, options
from hpc_mm.job.spec import JobSpec, derive

# Every flag hpc-mm writes itself, and the job-file key that sets it (declared on the key in
# spec.py). No other route into the argv (gpt.extra, entry.extra_args) may carry one of these: it
# would come after ours and win.
OWNED = {flag: key for key in options() for flag in flags(key)}
# Flags that make a resumed run differ from an unbroken one: refused while requeue is on
# (MindSpeed-MM's fine-tuning scripts pass them; checkpoint.pretrained is what they are for).
BREAK_EXACT_RESUME = ("--no-save-optim", "--no-save-rng", "--no-load-optim", "--no-load-rng", "--finetune")


def owner(flag_or_key: str) -> str | None:
    """The job-file key that owns this flag (any spelling or alias of it), or None."""
    option = table().find(flag_or_key)
    flags = option.flags if option else (normal(flag_or_key),)
    owned = {normal(f): key for f, key in OWNED.items()}
    return next((owned[normal(f)] for f in flags if normal(f) in owned), None)


def owned_hint(flag_or_key: str, owned: str) -> str:
    """What to set instead of a flag hpc-mm owns. `--load` is where a run resumes from (its own
    checkpoints, which hpc-mm writes): weights to start from are checkpoint.pretrained, never
    written to; setting checkpoint.dir to them would make the run's saves overwrite their tracker."""
    if normal(flag_or_key) == normal("--load"):
        return (
            "to start from converted weights, set checkpoint.pretrained (read only; hpc-mm never writes "
            "there); a run resumes from its own checkpoints by itself"
        )
    return f"set {owned} instead"


DEVICE_BACKEND = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
BACKEND_DEVICE = {"hccl": "npu", "nccl": "cuda", "gloo": "cpu"}


GRES_DEVICE = {"npu": "npu", "gpu": "cuda"}


def declared_device(spec: JobSpec) -> str | None:
    """The device the job declares: distributed.device, else what slurm.gres or
    slurm.gpus_per_node asks for; None when only the node can tell (auto, nothing requested)."""
    if spec.distributed.device != "auto":
        return spec.distributed.device
    if spec.slurm.gpus_per_node:
        return "cuda"
    return GRES_DEVICE.get((spec.slurm.gres or "").split(":")[0])


def device_hint(spec: JobSpec) -> str:
    """The device as far as a login node can tell: declared, else the one the backend implies."""
    return declared_device(spec) or BACKEND_DEVICE.get(spec.distributed.backend, "cpu")


def resolve_backend(requested: str, device: str, mpi_available: bool | None = None) -> str:
    """The process-group backend that will actually run."""
    if requested == "auto":
        return DEVICE_BACKEND[device]
    if requested == "mpi" and mpi_available is False:
        raise UserError.one(
            "distributed.backend",
            "mpi: this PyTorch was built without MPI",
            "use auto (gloo on CPU) or a PyTorch built from source with MPI",
        )
    if requested in BACKEND_DEVICE and BACKEND_DEVICE[requested] != device and requested != "gloo":
        raise UserError.one(
            "distributed.backend",
            f"{requested} needs a {BACKEND_DEVICE[requested]} device, but the job runs on {device}",
            "use auto",
        )
    return requested


def command_line_backend(backend: str) -> str:
    """What goes after --distributed-backend: Megatron accepts only nccl or gloo."""
    return "nccl" if backend == "hccl" else backend


def login_backend(spec: JobSpec) -> str:
    """The backend as far as a login node can tell (the launcher resolves it on the node)."""
    return resolve_backend(spec.distributed.backend, device_hint(spec))


def training_argv(
    spec: JobSpec,
    *,
    run_dir: Path,
    checkpoint_dir: Path,
    backend: str,
    world_size: int | None = None,
    collective_timeout_minutes: int | None = None,
    tensorboard_dir: Path | None = None,
) -> list[str]:
    """The arguments the entry point receives: GPT_ARGS, MM_ARGS, OUTPUT_ARGS, backend.

    `backend` is the one that will run (resolved once, by the launcher's plan or
    `login_backend`); `world_size`, when known, fills in a derived global batch size;
    `collective_timeout_minutes` is fault.collective_timeout_minutes, else the one above the hang
    budget (launch/watchdog.py), else Megatron's own.
    """
    g = spec.gpt
    gbs = g.global_batch_size or derive(spec, world_size).global_batch_size
    argv = _section_flags(spec, "gpt", {"global_batch_size": gbs})  # gbs unknown only with nproc_per_node: auto
    argv += _extra_flags(g.extra, spec.entry.mindspeed_mm)
    argv += _section_flags(spec, "mm")
    ckpt = str(checkpoint_dir)
    save, load = flags("checkpoint.dir")
    argv += [
        save,
        ckpt,
        load,
        ckpt,
        *flags("checkpoint.save_interval"),
        str(spec.checkpoint.save_interval),
        *flags("requeue.signal"),
    ]
    if spec.checkpoint.pretrained:  # used only while --load holds no checkpoint (core_v0.12)
        argv += [*flags("checkpoint.pretrained"), spec.checkpoint.pretrained]
    argv += [*flags("distributed.backend"), command_line_backend(backend)]
    timeout = spec.fault.collective_timeout_minutes or collective_timeout_minutes
    if timeout:
        argv += [*flags("fault.collective_timeout_minutes"), str(timeout)]
    if tensorboard_dir and not spec.builtin and job_value(spec, "--tensorboard-dir") is None:
        argv += ["--tensorboard-dir", str(tensorboard_dir)]  # every start's events in one folder of the run
    if spec.checkpoint.async_save:  # the built-in trainer's, or Megatron's own (torch_dist checkpoints)
        argv.append("--async-save")
    if spec.builtin:  # options of the built-in trainer only; Megatron would refuse them
        argv += ["--run-dir", str(run_dir)]
        if spec.checkpoint.keep_last:
            argv += ["--keep-last", str(spec.checkpoint.keep_last)]
    return argv


ASYNC_FORMAT = "torch_dist"  # the checkpoint format Megatron's --async-save writes


def checkpoint_format(spec: JobSpec) -> str | None:
    """Megatron's --ckpt-format for this job: its own (entry.extra_args, gpt.extra), else the release's
    default (None where the release has no such option)."""
    found = job_value(spec, "--ckpt-format")
    if found is not None:
        return found
    option = table(spec.entry.mindspeed_mm).find("--ckpt-format")
    return option.default if option is not None else None


def job_value(spec: JobSpec, flag: str) -> str | None:
    """The value the job itself gives a Megatron option (entry.extra_args, gpt.extra), or None."""
    args = spec.entry.extra_args
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name == flag:
            return value or (args[i + 1] if i + 1 < len(args) else None)
    for key, value in spec.gpt.extra.items():
        if normal(key) == normal(flag) and value not in (None, False):
            return str(value)
    return None


def _section_flags(spec: JobSpec, section: str, values: dict | None = None) -> list[str]:
    """The flags of one section of the job, in its order: a switch when true, else the flag and
    its value; nothing for an unset value, or one that goes only with another choice (WSD's)."""
    part, out = getattr(spec, section), []
    for key, f in options().items():
        if not key.startswith(f"{section}."):
            continue
        value = (values or {}).get(f.name, getattr(part, f.name))
        only = f.metadata.get("only_with")
        if value is None or value is False or (only and getattr(part, only[0]) != only[1]):
            continue
        out += [f.metadata["flag"]] if value is True else [f.metadata["flag"], _word(value)]
    return out


def distributed_args(nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> list[str]:
    """torchrun's DISTRIBUTED_ARGS, spelled as MindSpeed-MM's scripts spell them."""
    return [
        "--nproc_per_node",
        str(nproc_per_node),
        "--nnodes",
        str(nnodes),
        "--node_rank",
        str(node_rank),
        "--master_addr",
        master_addr,
        "--master_port",
        str(master_port),
    ]


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _extra_flags(extra: dict, release: str) -> list[str]:
    """gpt.extra as flags, spelled as Megatron spells them (`override_opt_param_scheduler` is
    `--override-opt_param-scheduler`); `false` and `null` add nothing."""
    out: list[str] = []
    for key, value in extra.items():
        option = table(release).find(key)
        flag = option.flag if option else normal(key)
        if value is False or value is None:
            continue
        if option is not None and option.type == "bool":  # argparse's bool(): any text is True
            out += [flag, "True"]
        elif value is True:
            out.append(flag)
        elif isinstance(value, str) and option is not None and option.nargs in ("+", "*"):
            # An option of several values given as one string ("linear_qkv linear_proj"): one word
            # each, as the shell gives them to the scripts that pass it unquoted.
            out += [flag, *shlex.split(value)]
        else:
            out += [flag, *(_word(v) for v in (value if isinstance(value, list) else [value]))]
    return out


def _word(value) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))
