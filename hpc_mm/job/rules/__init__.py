"""The rules a job must satisfy before anything is queued.

`validate` runs every rule and returns every problem, each naming the field the user wrote,
so one run of `hpc-mm validate` shows them all. Rules run in two phases: each field on its own
first (`fields`, `gpt`), then the arithmetic across fields (`gpt.arithmetic`), but only when
the fields it divides by are valid. `advice` returns what deserves a warning but is not wrong.
The same rules run for `validate`, `args`, `render`, `submit` and `launch`.
"""

from __future__ import annotations

from hpc_mm.errors import Problem
from hpc_mm.job.rules import fields, gpt, mm
from hpc_mm.job.spec import JobSpec

# The fields the cross-field arithmetic divides by or multiplies with.
ARITHMETIC_INPUTS = {
    "slurm.nodes", "distributed.nnodes", "distributed.nproc_per_node", "gpt.tensor_model_parallel_size",
    "gpt.pipeline_model_parallel_size", "gpt.context_parallel_size", "gpt.micro_batch_size",
    "gpt.global_batch_size", "gpt.gradient_accumulation_steps", "gpt.train_iters", "gpt.lr_decay_iters",
    "gpt.lr_warmup_iters", "gpt.lr_wsd_decay_iters",
}


def validate(spec: JobSpec) -> list[Problem]:
    problems = fields.check(spec) + gpt.check(spec)
    if not {p.field for p in problems} & ARITHMETIC_INPUTS:
        problems += gpt.arithmetic(spec)
    return problems + mm.check(spec)


def advice(spec: JobSpec) -> list[Problem]:
    """Warnings: things that may be right but usually are not (shown, never fatal)."""
    return gpt.advice(spec) + fields.advice(spec)
