"""The rules a job must satisfy before anything is queued.

`validate` runs every rule and returns every problem, each naming the field the user wrote,
so one run of `hpc-mm validate` shows them all. Rules run in two phases: each field on its own
first (`fields`, `gpt`), then the arithmetic across fields (`gpt.arithmetic`), but only when
the fields it divides by are valid. `advice` returns what deserves a warning but is not wrong.
The same rules run for `validate`, `args`, `render`, `submit` and `launch`.
"""

from __future__ import annotations

from hpc_mm.errors import Problem
from hpc_mm.job.entries import contract
from hpc_mm.job.rules import daytwo, fields, gpt, mm
from hpc_mm.job.schema import keys
from hpc_mm.job.spec import JobSpec, derive

# The fields the cross-field arithmetic divides by or multiplies with (marked in spec.py).
ARITHMETIC_INPUTS = {key for key, f in keys().items() if f.metadata.get("arithmetic")}


def validate(spec: JobSpec) -> list[Problem]:
    """Every rule for the job's entry kind (job/entries/): the job file's own, Megatron's arguments and
    the mm files for a Megatron entry, and the kind's own (the FSDP2 trainer's YAML, ...)."""
    problems = required(spec) + bounds(spec) + fields.check(spec) + daytwo.check(spec)
    if spec.entry.save_on_signal and spec.entry.kind != "fsdp2":
        problems.append(
            Problem(
                "entry.save_on_signal",
                f"is for the FSDP2 trainer; a {spec.entry.kind} entry "
                "saves on a stop itself (megatron) or does not train (command)",
                "remove it",
            )
        )
    megatron = spec.entry.kind == "megatron"
    if megatron:
        problems += gpt.check(spec)
        if not {p.field for p in problems} & ARITHMETIC_INPUTS:
            problems += gpt.arithmetic(spec)
    if megatron or spec.entry.kind == "command":
        problems += mm.check(spec)
    return problems + contract(spec).check(spec, derive(spec).world_size)


def required(spec: JobSpec) -> list[Problem]:
    """The keys the job's entry kind cannot run without (`required_for` in spec.py)."""
    out = []
    for key, f in keys().items():
        if spec.entry.kind in f.metadata.get("required_for", ()) and _value(spec, key) is None:
            out.append(Problem(key, "is required", f.metadata.get("hint", "")))
    return out


def _value(spec: JobSpec, key: str):
    value = spec
    for part in key.split("."):
        value = getattr(value, part)
    return value


def bounds(spec: JobSpec) -> list[Problem]:
    """Each key's smallest valid value, as spec.py declares it (`at_least`)."""
    out = []
    for key, f in keys().items():
        least = f.metadata.get("at_least")
        if least is None:
            continue
        value = _value(spec, key)
        if value is None or isinstance(value, (str, bool)) or value >= least:
            continue
        what = "a positive integer" if least == 1 else f"{least} or more"
        out.append(Problem(key, f"must be {what}, got {value}", f.metadata.get("bound_hint", "")))
    return out


def advice(spec: JobSpec) -> list[Problem]:
    """Warnings: things that may be right but usually are not (shown, never fatal)."""
    megatron = gpt.advice(spec) if spec.entry.kind == "megatron" else []
    return megatron + fields.advice(spec) + contract(spec).advice(spec)
