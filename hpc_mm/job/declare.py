"""How spec.py declares a job-file key that hpc-mm passes to the entry as a flag, and the rules that
go with the key (read back by job/schema.py, job/rules/ and the argv builder)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def option(
    flag: str | tuple[str, ...],
    default: Any = dataclasses.MISSING,
    *,
    at_least: float | None = None,
    arithmetic: bool = False,
    hint: str = "",
    only_with: tuple[str, str] | None = None,
    required_for: tuple[str, ...] = (),
) -> Any:
    """A job-file key that hpc-mm passes to the entry as `flag` (one or several flags). This is the
    one place a flag is named: the argv builder, the table of flags hpc-mm owns, the rules and the
    built-in trainer's parser read it from here. `at_least`: the smallest valid value (a rule);
    `arithmetic`: the cross-field arithmetic uses it; `only_with` (key, value): passed only then;
    `required_for`: the entry kinds that cannot run without it (the others need not give it)."""
    metadata = {"flag": flag, "arithmetic": arithmetic, "required_for": required_for}
    if at_least is not None:
        metadata["at_least"] = at_least
    if hint:
        metadata["hint"] = hint
    if only_with:
        metadata["only_with"] = only_with
    return field(default=default, metadata=metadata)
