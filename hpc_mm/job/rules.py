"""The rules a job must satisfy before anything is queued: `validate` and one check per concern.

Each check returns the problems it finds, each naming its field; `validate` runs them all so
a user sees every problem at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from hpc_mm.errors import Problem
from hpc_mm.job.spec import BUILTIN_TRAINER, GPT, JobSpec, derive

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)(_|$)", re.I)
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$", re.I)
_GRES = re.compile(r"^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)?:\d+(,[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)?:\d+)*$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:|&()\[\]*!-]+$")
_MANAGED_ARGS = {
    "save", "load", "save_interval", "distributed_backend", "mm_data", "mm_model", "mm_tool",
    "exit_signal_handler",
}


def validate(spec: JobSpec) -> list[Problem]:
    """Every rule the job must satisfy before anything is queued."""
    problems: list[Problem] = []
    for check in (_check_name, _check_entry, _check_slurm, _check_distributed, _check_gpt,
                  _check_parallel_arithmetic, _check_schedule, _check_checkpoint, _check_requeue,
                  _check_env, _check_mm_files):
        problems.extend(check(spec))
    return problems


def _positive(where: str, value: int | None, hint: str = "") -> list[Problem]:
    if value is not None and value < 1:
        return [Problem(where, f"must be a positive integer, got {value}", hint)]
    return []


def _check_name(spec: JobSpec) -> list[Problem]:
    if spec.name and not _JOB_NAME.match(spec.name):
        return [Problem("name", f"{spec.name!r} is not a safe Slurm job name",
                        "use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)")]
    return []


def _check_entry(spec: JobSpec) -> list[Problem]:
    e = spec.entry
    out = []
    if not e.script.strip():
        out.append(Problem("entry.script", "is empty", f"e.g. pretrain_vlm.py or {BUILTIN_TRAINER}"))
    if not e.script.endswith(".py") and not re.match(r"^[A-Za-z_][\w.]*$", e.script):
        out.append(Problem("entry.script", f"{e.script!r} is neither a .py file nor a Python module name",
                           f"e.g. pretrain_vlm.py or {BUILTIN_TRAINER}"))
    if spec.builtin and e.extra_args:
        out.append(Problem("entry.extra_args", "the built-in trainer takes no extra arguments",
                           "use gpt.* keys; extra_args are for MindSpeed-MM entry points"))
    return out


def _check_slurm(spec: JobSpec) -> list[Problem]:
    s = spec.slurm
    out = _positive("slurm.nodes", s.nodes) + _positive("slurm.cpus_per_task", s.cpus_per_task)
    if not _SLURM_TIME.match(s.time):
        out.append(Problem("slurm.time", f"{s.time!r} is not a Slurm time limit",
                           "use MM, HH:MM:SS or D-HH:MM:SS, e.g. 04:00:00"))
    if s.gres is not None and not _GRES.match(s.gres):
        out.append(Problem("slurm.gres", f"{s.gres!r} is not a gres request", "e.g. npu:8 or gpu:a100:4"))
    for key in ("partition", "account", "qos", "constraint", "mem"):
        value = getattr(s, key)
        if value is not None and not _SLURM_WORD.match(value):
            out.append(Problem(f"slurm.{key}", f"{value!r} has characters Slurm does not accept here",
                               "use letters, digits and . _ - , :"))
    for key in s.extra_sbatch:
        if not _SBATCH_KEY.match(key):
            out.append(Problem(f"slurm.extra_sbatch.{key}", "is not an sbatch long option name",
                               "write it without dashes, e.g. `mail-type: END`"))
    return out


def _check_distributed(spec: JobSpec) -> list[Problem]:
    d = spec.distributed
    out = _positive("distributed.nnodes", d.nnodes)
    if isinstance(d.nproc_per_node, int):
        out += _positive("distributed.nproc_per_node", d.nproc_per_node)
    if d.nnodes and d.nnodes != spec.slurm.nodes and spec.slurm.nodes != 1:
        out.append(Problem("distributed.nnodes", f"{d.nnodes} differs from slurm.nodes = {spec.slurm.nodes}",
                           "leave distributed.nnodes unset: it follows slurm.nodes"))
    if d.node_rank < 0 or (d.nnodes and d.node_rank >= spec.nnodes):
        out.append(Problem("distributed.node_rank", f"{d.node_rank} is outside 0..{spec.nnodes - 1}"))
    if isinstance(d.master_port, int) and not 1024 <= d.master_port <= 65535:
        out.append(Problem("distributed.master_port", f"{d.master_port} is outside 1024-65535",
                           "use `auto` (derived from the job id) or a free unprivileged port such as 6000"))
    if not re.match(r"^[A-Za-z0-9_.:-]+$", d.master_addr):
        out.append(Problem("distributed.master_addr", f"{d.master_addr!r} is not a host name or address"))
    if d.backend == "mpi" and not spec.builtin:
        out.append(Problem("distributed.backend", "Megatron's --distributed-backend accepts only nccl or gloo",
                           "use auto; mpi works only with the built-in trainer and a PyTorch built with MPI"))
    if d.backend == "hccl" and spec.slurm.gres and not spec.slurm.gres.startswith("npu"):
        out.append(Problem("distributed.backend", f"hccl runs on Ascend NPUs but slurm.gres is {spec.slurm.gres!r}",
                           "use auto, or request npu:N"))
    return out


def _check_gpt(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    out = []
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                 "micro_batch_size", "global_batch_size", "gradient_accumulation_steps", "train_iters",
                 "log_interval", "lr_decay_iters", "lr_wsd_decay_iters"):
        out += _positive(f"gpt.{name}", getattr(g, name))
    if g.num_workers < 0:
        out.append(Problem("gpt.num_workers", f"must be 0 or more, got {g.num_workers}"))
    if g.lr_warmup_iters < 0:
        out.append(Problem("gpt.lr_warmup_iters", f"must be 0 or more, got {g.lr_warmup_iters}"))
    if g.lr <= 0:
        out.append(Problem("gpt.lr", f"must be positive, got {g.lr}"))
    for name in ("min_lr", "lr_warmup_init", "weight_decay", "clip_grad"):
        if getattr(g, name) < 0:
            out.append(Problem(f"gpt.{name}", f"must be 0 or more, got {getattr(g, name)}"))
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(g, name) < 1.0:
            out.append(Problem(f"gpt.{name}", f"must be in [0, 1), got {getattr(g, name)}"))
    if g.adam_eps <= 0:
        out.append(Problem("gpt.adam_eps", f"must be positive, got {g.adam_eps}"))
    if g.min_lr > g.lr:
        out.append(Problem("gpt.min_lr", f"{g.min_lr} is larger than gpt.lr = {g.lr}", "min_lr must be <= lr"))
    if g.lr_warmup_init > g.lr:
        out.append(Problem("gpt.lr_warmup_init", f"{g.lr_warmup_init} is larger than gpt.lr = {g.lr}",
                           "warmup starts at lr_warmup_init and rises to lr"))
    for key in g.extra:
        flag = key.replace("-", "_")
        if flag in _MANAGED_ARGS or flag in {f.name for f in dataclasses.fields(GPT)}:
            out.append(Problem(f"gpt.extra.{key}", "is set by hpc-mm from the job file",
                               "use the matching gpt.*, mm.* or checkpoint.* key instead"))
    return out


def _check_parallel_arithmetic(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    derived = derive(spec)
    ws = derived.world_size
    if ws is None:
        return []  # nproc_per_node: auto; checked again at launch with the real world size
    mp = g.tensor_model_parallel_size * g.pipeline_model_parallel_size * g.context_parallel_size
    if ws % mp:
        return [Problem("gpt.tensor_model_parallel_size",
                        f"world size {ws} ({spec.nnodes} nodes x {ws // spec.nnodes}) is not divisible by "
                        f"TP x PP x CP = {g.tensor_model_parallel_size} x {g.pipeline_model_parallel_size} x "
                        f"{g.context_parallel_size} = {mp}",
                        "change the parallel sizes or the number of nodes/devices")]
    dp = derived.data_parallel_size
    out = []
    if g.global_batch_size and g.global_batch_size % (g.micro_batch_size * dp):
        out.append(Problem("gpt.global_batch_size",
                           f"{g.global_batch_size} is not a multiple of micro_batch_size x DP = "
                           f"{g.micro_batch_size} x {dp} = {g.micro_batch_size * dp}",
                           f"use a multiple such as {g.micro_batch_size * dp * max(1, g.global_batch_size // (g.micro_batch_size * dp))}, "
                           "or leave it unset to get MBS x gradient_accumulation_steps x DP"))
    elif (g.global_batch_size and g.gradient_accumulation_steps != 1
          and g.global_batch_size != g.micro_batch_size * g.gradient_accumulation_steps * dp):
        out.append(Problem("gpt.gradient_accumulation_steps",
                           f"{g.gradient_accumulation_steps} disagrees with global_batch_size {g.global_batch_size} "
                           f"= MBS {g.micro_batch_size} x DP {dp} x {g.global_batch_size // (g.micro_batch_size * dp)}",
                           "set only one of global_batch_size and gradient_accumulation_steps"))
    return out


def _check_schedule(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    decay = g.lr_decay_iters or g.train_iters
    out = []
    if g.lr_warmup_iters and decay and g.lr_warmup_iters >= decay:
        out.append(Problem("gpt.lr_warmup_iters", f"{g.lr_warmup_iters} is not shorter than the decay span {decay}",
                           "warmup must end before lr_decay_iters (default: train_iters)"))
    if g.lr_decay_style == "WSD":
        if g.lr_wsd_decay_iters is None:
            out.append(Problem("gpt.lr_wsd_decay_iters", "is required when lr_decay_style is WSD",
                               "the number of final iterations spent annealing, e.g. 10% of train_iters"))
        elif g.train_iters and g.lr_wsd_decay_iters > g.train_iters:
            out.append(Problem("gpt.lr_wsd_decay_iters", f"{g.lr_wsd_decay_iters} is longer than train_iters = {g.train_iters}"))
    return out


def _check_checkpoint(spec: JobSpec) -> list[Problem]:
    c = spec.checkpoint
    return _positive("checkpoint.save_interval", c.save_interval) + _positive(
        "checkpoint.keep_last", c.keep_last, "leave it unset (null) to keep every checkpoint")


def _check_requeue(spec: JobSpec) -> list[Problem]:
    r = spec.requeue
    out = []
    if not 10 <= r.grace_seconds <= 3600:
        out.append(Problem("requeue.grace_seconds", f"{r.grace_seconds} is outside 10-3600",
                           "seconds before the time limit/preemption to save; allow for one checkpoint write"))
    if r.max_restarts < 0:
        out.append(Problem("requeue.max_restarts", f"must be 0 or more, got {r.max_restarts}"))
    return out


def _check_env(spec: JobSpec) -> list[Problem]:
    out = []
    for key, value in spec.env.items():
        if not _ENV_NAME.match(key):
            out.append(Problem(f"env.{key}", "is not a valid environment variable name",
                               "use letters, digits and underscores, not starting with a digit"))
        elif _SECRET_NAME.search(key):
            out.append(Problem(f"env.{key}", "looks like a secret; hpc-mm never writes secrets into scripts",
                               "export it in your shell before `hpc-mm submit` (sbatch passes your environment)"))
    want = spec.env.get("CUDA_DEVICE_MAX_CONNECTIONS")
    if want not in (None, "1") and (spec.gpt.tensor_model_parallel_size > 1 or spec.gpt.context_parallel_size > 1):
        out.append(Problem("env.CUDA_DEVICE_MAX_CONNECTIONS", f"is {want!r}; Megatron requires 1 with TP or CP > 1"))
    return out


def _check_mm_files(spec: JobSpec) -> list[Problem]:
    out = []
    docs = {}
    for name in ("data", "model", "tool"):
        path = getattr(spec.mm, name)
        if not path:
            continue
        hint = "set mm.tool to a tools.json (top level: profile, memory_profile)" if name == "tool" else "check the path (relative to the job file)"
        doc, problem = _read_json(f"mm.{name}", Path(path), hint)
        if problem:
            out.append(problem)
        docs[name] = doc
    data = docs.get("data")
    if isinstance(data, dict):
        for key in ("dataset_param", "dataloader_param"):
            if key not in data:
                out.append(Problem("mm.data", f"{spec.mm.data} has no top-level {key!r}",
                                   "mm-data JSON needs dataset_param and dataloader_param"))
    elif data is not None:
        out.append(Problem("mm.data", f"{spec.mm.data} must hold a JSON object"))
    model = docs.get("model")
    if model is not None and not isinstance(model, dict):
        out.append(Problem("mm.model", f"{spec.mm.model} must hold a JSON object"))
    elif model is not None:
        out += _check_pipeline_layers(spec, model)
    return out


def _check_pipeline_layers(spec: JobSpec, model: dict) -> list[Problem]:
    decoder = model.get("text_decoder")
    if not isinstance(decoder, dict) or "pipeline_num_layers" not in decoder:
        return []
    layers = decoder["pipeline_num_layers"]
    pp = spec.gpt.pipeline_model_parallel_size
    where = "mm.model"
    if not isinstance(layers, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
        return [Problem(where, f"text_decoder.pipeline_num_layers must be a list of integers, got {layers!r}")]
    if len(layers) != pp:
        return [Problem(where, f"text_decoder.pipeline_num_layers has {len(layers)} entries but "
                               f"pipeline_model_parallel_size is {pp}",
                        "give one layer count per pipeline stage")]
    if any(n <= 0 for n in layers):
        return [Problem(where, f"text_decoder.pipeline_num_layers {layers} has a stage with no layers",
                        "every pipeline stage needs at least one layer")]
    total = decoder.get("num_layers")
    if isinstance(total, int) and sum(layers) != total:
        return [Problem(where, f"text_decoder.pipeline_num_layers {layers} sums to {sum(layers)}, "
                               f"not num_layers = {total}")]
    return []


def _read_json(where: str, path: Path, hint: str) -> tuple[Any, Problem | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, Problem(where, f"{path} does not exist", hint)
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        return None, Problem(where, f"cannot read {path} ({exc.__class__.__name__})")
    except json.JSONDecodeError as exc:
        return None, Problem(where, f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}")
