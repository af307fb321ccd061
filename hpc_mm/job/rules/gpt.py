"""Rules for the training arguments: each gpt.* value, gpt.extra against Megatron's own option
table, and the arithmetic across fields (world size, batch sizes, the schedule)."""

from __future__ import annotations

import math
from typing import Any

from hpc_mm.errors import Problem
from hpc_mm.job.coerce import ambiguous
from hpc_mm.job.megatron import owned_hint, owner
from hpc_mm.job.options import OptionTable, table, value_problem
from hpc_mm.job.spec import JobSpec, derive
from hpc_mm.job.yamlfile import AmbiguousNumber

# The factors of the model-parallel size, in the order they are multiplied.
_PARALLEL = (
    ("tensor_model_parallel_size", "TP"),
    ("pipeline_model_parallel_size", "PP"),
    ("context_parallel_size", "CP"),
)


def check(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    out = []
    if g.lr is not None and g.lr <= 0:
        out.append(Problem("gpt.lr", f"must be positive, got {g.lr}"))
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(g, name) < 1.0:
            out.append(Problem(f"gpt.{name}", f"must be in [0, 1), got {getattr(g, name)}"))
    if g.adam_eps <= 0:
        out.append(Problem("gpt.adam_eps", f"must be positive, got {g.adam_eps}"))
    if g.lr and g.lr > 0 and g.min_lr > g.lr:  # against a valid lr only: no follow-on errors
        out.append(Problem("gpt.min_lr", f"{g.min_lr} is larger than gpt.lr = {g.lr}", "min_lr must be <= lr"))
    if g.lr and g.lr > 0 and g.lr_warmup_init > g.lr:
        out.append(
            Problem(
                "gpt.lr_warmup_init",
                f"{g.lr_warmup_init} is larger than gpt.lr = {g.lr}",
                "warmup starts at lr_warmup_init and rises to lr",
            )
        )
    for key, value in g.extra.items():
        out += _extra(f"gpt.extra.{key}", key, value, table(spec.entry.mindspeed_mm))
    return out


def _extra(where: str, key: str, value: Any, options: OptionTable) -> list[Problem]:
    owned = owner(key)
    if owned:
        return [
            Problem(
                where,
                "is set by hpc-mm from the job file; here it would override the checked value",
                owned_hint(key, owned),
            )
        ]
    bad = _bad_value(value)
    if bad:
        return [bad(where)]
    option = options.find(key)
    if option is None:
        close = options.close(key)
        if close:
            return [
                Problem(
                    where,
                    "is not an option of Megatron, MindSpeed or MindSpeed-MM",
                    f"did you mean {close[2:].replace('-', '_')!r} ({close})?",
                )
            ]
        return []  # unknown and not close to a known one: a warning (advice), passed as written
    problem = value_problem(option, value)
    return [Problem(where, problem, f"see `{option.flag}` ({option.source})")] if problem else []


def _bad_value(value: Any):
    """A value no option can take: a misread number, a non-finite one, or a word that is itself
    an option (it would reach the parser as a flag of its own)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, AmbiguousNumber):
            return lambda where, item=item: ambiguous(where, item)
        if isinstance(item, float) and not math.isfinite(item):
            return lambda where, item=item: Problem(where, f"{item!r} is not a finite number")
        if isinstance(item, str) and item.startswith("--"):
            return lambda where, item=item: Problem(
                where, f"the value {item!r} is an option of its own", "give each option its own gpt.extra key"
            )
    return None


def advice(spec: JobSpec) -> list[Problem]:
    out = []
    for key in spec.gpt.extra:
        options = table(spec.entry.mindspeed_mm)
        if owner(key) is None and options.find(key) is None and options.close(key) is None:
            versions = ", ".join(f"{k} {v}" for k, v in options.versions.items())
            near = options.close(key, cutoff=0.6)
            maybe = f"did you mean {near[2:].replace('-', '_')!r} ({near})? " if near else ""
            out.append(
                Problem(
                    f"gpt.extra.{key}",
                    f"is not an option of {versions}; passed as written",
                    f"{maybe}check the spelling; options of other entry points are fine",
                )
            )
    return out


def arithmetic(spec: JobSpec) -> list[Problem]:
    """World size vs TP x PP x CP, global batch vs MBS x DP, the schedule. Runs only when every
    field it uses is valid on its own."""
    return _world(spec) + _experts(spec) + _schedule(spec)


def _experts(spec: JobSpec) -> list[Problem]:
    """Expert parallelism as Megatron core 0.12 checks it: the world size divisible by expert TP x EP x
    PP (parallel_state), and the experts by EP (arguments)."""
    g, extra = spec.gpt, spec.gpt.extra
    ep = extra.get("expert_model_parallel_size", 1)
    etp = extra.get("expert_tensor_parallel_size", g.tensor_model_parallel_size)
    experts = extra.get("num_experts")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (ep, etp)):
        return []  # the option table reports a wrong type
    out = []
    ws = derive(spec).world_size
    group = etp * ep * g.pipeline_model_parallel_size
    if ws is not None and ws % group:
        out.append(
            Problem(
                "gpt.extra.expert_model_parallel_size",
                f"world size {ws} is not divisible by expert TP "
                f"x EP x PP = {etp} x {ep} x {g.pipeline_model_parallel_size} = {group}",
                "change expert_model_parallel_size (or the number of nodes/devices)",
            )
        )
    if isinstance(experts, int) and not isinstance(experts, bool) and experts % ep:
        out.append(
            Problem(
                "gpt.extra.num_experts",
                f"{experts} is not divisible by expert_model_parallel_size {ep}",
                "every expert-parallel rank holds the same number of experts",
            )
        )
    return out


def _world(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    derived = derive(spec)
    ws = derived.world_size
    if ws is None:
        return []  # nproc_per_node: auto; checked again at launch with the real world size
    product = 1
    for name, short in _PARALLEL:  # name the factor at which the product stops dividing
        product *= getattr(g, name)
        if ws % product:
            sizes = " x ".join(str(getattr(g, n)) for n, _ in _PARALLEL)
            return [
                Problem(
                    f"gpt.{name}",
                    f"world size {ws} ({spec.nnodes} node(s) x {ws // spec.nnodes}) is not "
                    f"divisible by TP x PP x CP = {sizes}: {short} = {getattr(g, name)} breaks it",
                    "change the parallel sizes or the number of nodes/devices",
                )
            ]
    dp = derived.data_parallel_size
    step = g.micro_batch_size * dp
    if g.global_batch_size and g.global_batch_size % step:
        return [
            Problem(
                "gpt.global_batch_size",
                f"{g.global_batch_size} is not a multiple of micro_batch_size x DP = "
                f"{g.micro_batch_size} x {dp} = {step}",
                f"use a multiple such as {step * max(1, g.global_batch_size // step)}, "
                "or leave it unset to get MBS x gradient_accumulation_steps x DP",
            )
        ]
    if (
        g.global_batch_size
        and g.gradient_accumulation_steps != 1
        and g.global_batch_size != step * g.gradient_accumulation_steps
    ):
        return [
            Problem(
                "gpt.gradient_accumulation_steps",
                f"{g.gradient_accumulation_steps} disagrees with global_batch_size {g.global_batch_size} "
                f"= MBS {g.micro_batch_size} x DP {dp} x {g.global_batch_size // step}",
                "set only one of global_batch_size and gradient_accumulation_steps",
            )
        ]
    return []


def _schedule(spec: JobSpec) -> list[Problem]:
    g = spec.gpt
    decay = g.lr_decay_iters or g.train_iters
    out = []
    if g.lr_warmup_iters and decay and g.lr_warmup_iters >= decay:
        out.append(
            Problem(
                "gpt.lr_warmup_iters",
                f"{g.lr_warmup_iters} is not shorter than the decay span {decay}",
                "warmup must end before lr_decay_iters (default: train_iters)",
            )
        )
    if g.lr_warmup_iters and g.extra.get("lr_warmup_fraction") is not None:
        out.append(
            Problem(
                "gpt.extra.lr_warmup_fraction",
                "and gpt.lr_warmup_iters are both set",
                "Megatron takes one of them: set lr_warmup_iters to 0, or drop the fraction",
            )
        )
    if g.lr_decay_style == "WSD":
        if g.lr_wsd_decay_iters is None:
            out.append(
                Problem(
                    "gpt.lr_wsd_decay_iters",
                    "is required when lr_decay_style is WSD",
                    "the number of final iterations spent annealing, e.g. 10% of train_iters",
                )
            )
        elif g.train_iters and g.lr_wsd_decay_iters > g.train_iters:
            out.append(
                Problem(
                    "gpt.lr_wsd_decay_iters", f"{g.lr_wsd_decay_iters} is longer than train_iters = {g.train_iters}"
                )
            )
    return out
