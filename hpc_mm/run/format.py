"""Numbers for people: durations, losses, rates; never `None` or 17 digits."""

from __future__ import annotations

import math

DASH = "-"


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 42s; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return DASH
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def number(value: float | int | None, digits: int = 4) -> str:
    """A loss or a rate with `digits` significant digits; `-` when unknown."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return DASH
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def text(value) -> str:
    return DASH if value in (None, "") else str(value)


def rate(value: float | None) -> str:
    """A rate per second for a narrow column: 950, 12.3k, 4.56M; `-` when unknown."""
    if value is None or not math.isfinite(value):
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def last_checkpoint(iteration: int | None) -> str:
    """How a stop's message names the checkpoint a resume starts from."""
    return f"its last checkpoint is iteration {iteration}" if iteration is not None else "it has no checkpoint yet"


def nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"
