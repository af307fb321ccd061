"""Slurm's time formats, read in one place: time limits in a job file (MM, MM:SS, HH:MM:SS, D-HH,
D-HH:MM, D-HH:MM:SS, UNLIMITED) and the times squeue and sacct print ([D-]HH:MM:SS, MM:SS).

The first field may be as large as you like (`90` is 90 minutes, `36:00:00` 36 hours); every
later field must be in its range (`1:99:99` is refused, as Slurm would misread or refuse it).
Slurm keeps time limits in whole minutes and rounds seconds up (`1:30` runs for 2 minutes), so a
limit with seconds is refused rather than silently lengthened.
"""

from __future__ import annotations

import re

UNLIMITED = ("UNLIMITED", "INFINITE")
_FORMAT = re.compile(r"(?:(?P<days>\d+)-)?(?P<fields>\d+(?::\d+){0,2})")
_NAMES = {3600: "hours", 60: "minutes", 1: "seconds"}
FORMATS = 'MM, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. "04:00:00" or "1-12:00:00")'


def parse(text: str) -> int | None:
    """Seconds in a Slurm time (None for UNLIMITED); ValueError says what is wrong."""
    if text.upper() in UNLIMITED:
        return None
    match = _FORMAT.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time limit")
    parts = [int(p) for p in match.group("fields").split(":")]
    days = match.group("days")
    if days is not None:  # D-HH[:MM[:SS]]: every field after the days is bounded
        units, limits = [3600, 60, 1][: len(parts)], [24, 60, 60][: len(parts)]
    else:  # MM, MM:SS, HH:MM:SS: the first field is not
        units = {1: [60], 2: [60, 1], 3: [3600, 60, 1]}[len(parts)]
        limits = [None, 60, 60][: len(parts)]
    for value, unit, limit in zip(parts, units, limits):
        if limit is not None and value >= limit:
            raise ValueError(f"{text!r}: {value} {_NAMES[unit]} is out of range (0-{limit - 1})")
    return int(days or 0) * 86400 + sum(v * u for v, u in zip(parts, units))


def printed_seconds(text: str | None) -> float | None:
    """A time squeue or sacct printed; None for UNLIMITED, INVALID, NOT_SET or nothing."""
    try:
        return parse((text or "").strip())
    except ValueError:
        return None


def limit_seconds(text: str) -> int | None:
    """A job's time limit in seconds (None: UNLIMITED); ValueError says what is wrong."""
    total = parse(text)
    if total == 0:
        raise ValueError(f"{text!r} is a zero time limit")
    if total is not None and total % 60:
        minutes = -(-total // 60)
        raise ValueError(
            f"{text!r} has seconds, but Slurm keeps time limits in whole minutes and would run the "
            f"job for {minutes // 60:02d}:{minutes % 60:02d}:00"
        )
    return total
