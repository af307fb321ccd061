"""Rules for each field on its own: names, the entry, Slurm's resources, the topology, the
checkpoint and requeue policy, the environment and setup lines."""

from __future__ import annotations

import re
from pathlib import Path

from hpc_mm.errors import Problem, UserError
from hpc_mm.job.megatron import (
    BREAK_EXACT_RESUME,
    declared_device,
    owned_hint,
    owner,
    resolve_backend,
)
from hpc_mm.job.options import normal
from hpc_mm.job.rules import slurm as slurm_rules
from hpc_mm.job.rules.common import control_characters, positive, shown
from hpc_mm.job.secrets import is_secret_name, looks_secret
from hpc_mm.job.spec import BUILTIN_TRAINER, LAUNCHER_OWNS, JobSpec, devices_requested

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][\w.]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST = re.compile(r"[A-Za-z0-9_.:-]+")


def check(spec: JobSpec) -> list[Problem]:
    out: list[Problem] = []
    rules = (_name, _entry, slurm_rules.check, _distributed, _checkpoint, _requeue, _fault, _env, _setup)
    rules += (_resume, _post)
    for rule in rules:
        out += rule(spec)
    return out


def advice(spec: JobSpec) -> list[Problem]:
    """Paths that do not exist here: they may on the compute nodes, but usually this is a typo."""
    out = []
    workdir = Path(spec.entry.workdir)
    if not workdir.is_dir():
        out.append(
            Problem(
                "entry.workdir",
                f"{workdir} does not exist on this machine",
                "fine if it exists on the compute nodes; otherwise point it at your MindSpeed-MM checkout",
            )
        )
    elif spec.entry.script.endswith(".py") and not (workdir / spec.entry.script).is_file():
        out.append(
            Problem(
                "entry.script",
                f"{workdir / spec.entry.script} does not exist on this machine",
                "fine if it exists on the compute nodes",
            )
        )
    if spec.checkpoint.pretrained and not Path(spec.checkpoint.pretrained).exists():
        out.append(
            Problem(
                "checkpoint.pretrained",
                f"{spec.checkpoint.pretrained} does not exist on this machine",
                "fine if it exists on the compute nodes",
            )
        )
    return out


def _fault(spec: JobSpec) -> list[Problem]:
    pattern = spec.fault.progress_pattern
    if pattern is None:
        return []
    out = control_characters("fault.progress_pattern", pattern)
    if not pattern.strip() or len(pattern) > 500:
        return out + [Problem("fault.progress_pattern", "must be 1 to 500 characters", r"e.g. 'step \d+/\d+'")]
    try:
        re.compile(pattern)
    except re.error as exc:
        out.append(
            Problem("fault.progress_pattern", f"is not a regular expression ({exc})", r"e.g. 'sampling (?P<it>\d+)/'")
        )
    return out


def _name(spec: JobSpec) -> list[Problem]:
    if spec.name and not _JOB_NAME.fullmatch(spec.name):
        return [
            Problem(
                "name",
                f"{spec.name!r} is not a safe Slurm job name",
                "use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)",
            )
        ]
    return []


def _entry(spec: JobSpec) -> list[Problem]:
    e = spec.entry
    out = control_characters("entry.script", e.script) + control_characters("entry.python", e.python)
    if not e.script.strip():
        out.append(Problem("entry.script", "is empty", f"e.g. pretrain_vlm.py or {BUILTIN_TRAINER}"))
    elif not e.program and not e.script.endswith(".py") and not _MODULE.fullmatch(e.script):
        out.append(
            Problem(
                "entry.script",
                f"{e.script!r} is neither a .py file nor a Python module name",
                f"e.g. pretrain_vlm.py or {BUILTIN_TRAINER}; a program of its own: set entry.program: true",
            )
        )
    for i, word in enumerate(e.wrapper):
        out += control_characters(f"entry.wrapper[{i}]", word)
    if spec.builtin and e.extra_args:
        out.append(
            Problem(
                "entry.extra_args",
                "the built-in trainer takes no extra arguments",
                "use gpt.* keys; extra_args are for MindSpeed-MM entry points",
            )
        )
    for i, arg in enumerate(e.extra_args):  # an argument never passes through a shell: a JSON value may span lines
        out += control_characters(f"entry.extra_args[{i}]", arg, allowed="\n\t")
        key = owner(arg.split("=", 1)[0]) if arg.startswith("--") and spec.entry.kind == "megatron" else None
        if key:
            out.append(
                Problem(
                    f"entry.extra_args[{i}]",
                    f"{arg} is set by hpc-mm from the job file; passed here it would override the checked value",
                    owned_hint(arg.split("=", 1)[0], key),
                )
            )
    return out + _launcher(spec)


def _launcher(spec: JobSpec) -> list[Problem]:
    """entry.launcher_args: the launcher's own options, never those hpc-mm sets from the allocation;
    entry.program: a program of its own runs under torchrun, accelerate or srun, not msrun."""
    e, out = spec.entry, []
    owned = LAUNCHER_OWNS[e.launcher]
    for i, arg in enumerate(e.launcher_args):
        out += control_characters(f"entry.launcher_args[{i}]", arg, allowed="\n\t")
        name = arg.split("=", 1)[0]
        if e.launcher == "srun":
            out.append(Problem(f"entry.launcher_args[{i}]", "srun's options are slurm.srun_args", "move them there"))
        elif name in owned:
            out.append(
                Problem(
                    f"entry.launcher_args[{i}]",
                    f"{name} is set by hpc-mm from the allocation (nodes, ranks, master address and port)",
                    f"remove it; hpc-mm passes {e.launcher} every {', '.join(owned[:3])}, ... it needs",
                )
            )
    if e.launcher != "ray" and e.script.startswith("verl.") and spec.nnodes > 1:
        out.append(
            Problem(
                "entry.launcher",
                f"verl's driver runs once, on a Ray cluster; with {e.launcher} on {spec.nnodes} nodes every node "
                "would start it and no cluster would form",
                "set entry.launcher: ray (hpc-mm forms the cluster across the nodes and runs the driver on its head)",
            )
        )
    if e.program and e.launcher == "msrun":
        out.append(Problem("entry.program", "msrun starts Python scripts only", "use launcher torchrun or srun"))
    if e.program and e.kind in ("megatron", "fsdp2"):
        out.append(Problem("entry.program", f"a {e.kind} entry is a Python script", "set entry.kind: command"))
    return out


def _distributed(spec: JobSpec) -> list[Problem]:
    d = spec.distributed
    out = []
    if isinstance(d.nproc_per_node, int):
        out += positive("distributed.nproc_per_node", d.nproc_per_node)
    elif spec.entry.launcher == "srun" and devices_requested(spec) is None:
        out.append(
            Problem(
                "distributed.nproc_per_node",
                "auto needs slurm.gres (e.g. npu:8) or slurm.gpus_per_node with launcher srun",
                "set a number, or use launcher torchrun",
            )
        )
    if spec.nnodes >= 1 and not 0 <= d.node_rank < spec.nnodes:
        out.append(
            Problem(
                "distributed.node_rank",
                f"{d.node_rank} is outside 0..{spec.nnodes - 1}",
                f"the job has {spec.nnodes} node(s)",
            )
        )
    if isinstance(d.master_port, int) and not 1024 <= d.master_port <= 65535:
        out.append(
            Problem(
                "distributed.master_port",
                f"{d.master_port} is outside 1024-65535",
                "use `auto` (derived from the job id) or a free unprivileged port such as 6000",
            )
        )
    if not _HOST.fullmatch(d.master_addr):
        out.append(Problem("distributed.master_addr", f"{d.master_addr!r} is not a host name or address"))
    if d.backend == "mpi" and not spec.builtin:
        out.append(
            Problem(
                "distributed.backend",
                "Megatron's --distributed-backend accepts only nccl or gloo",
                "use auto; mpi works only with the built-in trainer and a PyTorch built with MPI",
            )
        )
    elif declared_device(spec):
        try:
            resolve_backend(d.backend, declared_device(spec))
        except UserError as exc:
            out += exc.problems
    return out


def _checkpoint(spec: JobSpec) -> list[Problem]:
    c = spec.checkpoint
    out = control_characters("checkpoint.dir", c.dir) + control_characters("checkpoint.pretrained", c.pretrained)
    if spec.requeue.enabled and spec.entry.kind == "megatron":
        out += _exact_resume(spec)
    return out


def _exact_resume(spec: JobSpec) -> list[Problem]:
    """While requeue is on, every restart must resume what the last one saved, whole."""
    hint = (
        "to start from pretrained weights set checkpoint.pretrained (loaded only while the run has no "
        "checkpoint of its own); or set requeue.enabled: false"
    )
    out = []
    for key, value in spec.gpt.extra.items():
        if value is True and normal(key) in BREAK_EXACT_RESUME:
            out.append(Problem(f"gpt.extra.{key}", "breaks the exact resume that requeue relies on", hint))
    for i, arg in enumerate(spec.entry.extra_args):
        if arg.startswith("--") and normal(arg.split("=", 1)[0]) in BREAK_EXACT_RESUME:
            out.append(Problem(f"entry.extra_args[{i}]", f"{arg} breaks the exact resume that requeue relies on", hint))
    return out


def _requeue(spec: JobSpec) -> list[Problem]:
    r, f = spec.requeue, spec.fault
    out = []
    if f.hang_factor < 1:
        out.append(
            Problem(
                "fault.hang_factor",
                f"{f.hang_factor} is less than 1",
                "a phase may take this many times its slowest observed duration; 5-20 is usual",
            )
        )
    if not 10 <= r.grace_seconds <= 3600:
        out.append(
            Problem(
                "requeue.grace_seconds",
                f"{r.grace_seconds} is outside 10-3600",
                "seconds before the time limit/preemption to save; allow for one checkpoint write",
            )
        )
    return out


def _env(spec: JobSpec) -> list[Problem]:
    out = []
    for key, value in spec.env.items():
        if not _ENV_NAME.fullmatch(key):
            out.append(
                Problem(
                    f"env.{shown(key)}",
                    "is not a valid environment variable name",
                    "use letters, digits and underscores, not starting with a digit",
                )
            )
        elif value is not None and (is_secret_name(key) or looks_secret(value)):
            what = "its name" if is_secret_name(key) else "its value"
            out.append(
                Problem(
                    f"env.{key}",
                    f"looks like a secret ({what}); hpc-mm never writes secrets into scripts or records",
                    "export it in your shell before `hpc-mm submit` instead (sbatch passes your environment)",
                )
            )
        else:
            out += control_characters(f"env.{key}", value, allowed="\t")
    want = spec.env.get("CUDA_DEVICE_MAX_CONNECTIONS")
    if want not in (None, "1") and (spec.gpt.tensor_model_parallel_size > 1 or spec.gpt.context_parallel_size > 1):
        out.append(Problem("env.CUDA_DEVICE_MAX_CONNECTIONS", f"is {want!r}; Megatron requires 1 with TP or CP > 1"))
    return out


def _resume(spec: JobSpec) -> list[Problem]:
    """resume: is how an entry hpc-mm does not drive declares its own checkpoints."""
    r, out = spec.resume, []
    if r.dir is None:
        if r.args or r.every or r.steps:
            out.append(Problem("resume.dir", "is not set, but resume.* is", "name the folder the entry saves into"))
        return out
    if spec.entry.kind != "command":
        out.append(
            Problem(
                "resume.dir",
                f"is for entries hpc-mm does not drive; a {spec.entry.kind} entry resumes from checkpoint.dir",
                "remove resume:; hpc-mm passes the entry its checkpoint folder itself",
            )
        )
    try:
        groups = re.compile(r.pattern).groups
    except re.error as exc:
        return out + [Problem("resume.pattern", f"is not a regular expression ({exc})", r"e.g. checkpoint-(\d+)")]
    if groups < 1:
        out.append(Problem("resume.pattern", "has no group for the step", r"e.g. checkpoint-(\d+)"))
    for i, arg in enumerate(r.args):
        out += control_characters(f"resume.args[{i}]", arg, allowed="\n\t")
    return out


def _post(spec: JobSpec) -> list[Problem]:
    out = []
    for i, line in enumerate(spec.post):
        if not line.strip():
            out.append(Problem(f"post[{i}]", "is empty", "remove it"))
        out += control_characters(f"post[{i}]", line, allowed="\t")
    return out


def _setup(spec: JobSpec) -> list[Problem]:
    out = []
    for i, line in enumerate(spec.setup):  # shell by design; line breaks and tabs are shell too
        out += control_characters(f"setup[{i}]", line, allowed="\n\t")
    return out
