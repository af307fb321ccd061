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
from hpc_mm.job.schema import keys
from hpc_mm.job.spec import JobSpec

# The fields the cross-field arithmetic divides by or multiplies with (marked in spec.py).
ARITHMETIC_INPUTS = {key for key, f in keys().items() if f.metadata.get("arithmetic")}


def validate(spec: JobSpec) -> list[Problem]:
    problems = bounds(spec) + fields.check(spec) + gpt.check(spec)
    if not {p.field for p in problems} & ARITHMETIC_INPUTS:
        problems += gpt.arithmetic(spec)
    return problems + mm.check(spec)


def bounds(spec: JobSpec) -> list[Problem]:
    """Each key's smallest valid value, as spec.py declares it (`at_least`)."""
    out = []
    for key, f in keys().items():
        least = f.metadata.get("at_least")
        if least is None:
            continue
        value = spec
        for part in key.split("."):
            value = getattr(value, part)
        if value is None or isinstance(value, (str, bool)) or value >= least:
            continue
        what = "a positive integer" if least == 1 else f"{least} or more"
        out.append(Problem(key, f"must be {what}, got {value}", f.metadata.get("bound_hint", "")))
    return out


def advice(spec: JobSpec) -> list[Problem]:
    """Warnings: things that may be right but usually are not (shown, never fatal)."""
    return gpt.advice(spec) + fields.advice(spec)
