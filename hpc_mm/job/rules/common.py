"""Small helpers the rules share."""

from __future__ import annotations

import re

from hpc_mm.errors import Problem

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def positive(where: str, value: int | None, hint: str = "") -> list[Problem]:
    if value is not None and value < 1:
        return [Problem(where, f"must be a positive integer, got {value}", hint)]
    return []


def at_least_zero(where: str, value: float | int | None) -> list[Problem]:
    if value is not None and value < 0:
        return [Problem(where, f"must be 0 or more, got {value}")]
    return []


def control_characters(where: str, text: str | None, allowed: str = "") -> list[Problem]:
    """Line breaks and other control characters in a value that reaches the batch script."""
    bad = [c for c in _CONTROL.findall(text or "") if c not in allowed]
    if bad:
        return [
            Problem(
                where,
                f"{text!r} contains control characters ({', '.join(map(repr, sorted(set(bad))))})",
                "a value in a job file is one line of printable text",
            )
        ]
    return []


def shown(key: str) -> str:
    """A key as it appears in an error: as written, or quoted when it holds unprintable characters."""
    return key if key.isprintable() else repr(key)
