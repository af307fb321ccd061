"""The job file's keys as data, read from spec.py's dataclasses: every leaf key, and the flag each
owned key is passed as (declared once, on the key, with `option`)."""

from __future__ import annotations

import dataclasses
import functools
from typing import get_type_hints

from hpc_mm.job.spec import JobSpec


@functools.lru_cache(maxsize=None)
def keys(cls: type = None, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf key of the job file ("gpt.micro_batch_size": its field), in file order."""
    cls = cls or JobSpec
    hints, out = get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            out.update(keys(hints[f.name], f"{key}."))
        elif not f.metadata.get("internal"):
            out[key] = f
    return out


@functools.lru_cache(maxsize=None)
def options() -> dict[str, dataclasses.Field]:
    """Every job-file key that carries a flag, in file order."""
    return {key: f for key, f in keys().items() if "flag" in f.metadata}


def flags(key: str) -> tuple[str, ...]:
    """The flags job-file key `key` is passed as."""
    flag = options()[key].metadata["flag"]
    return (flag,) if isinstance(flag, str) else tuple(flag)
