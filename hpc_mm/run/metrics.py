"""metrics.jsonl: one line per training iteration (iteration, loss, lr, grad norm, throughput)."""

from __future__ import annotations

import numbers
from pathlib import Path

from hpc_mm.run.events import append, read_objects
from hpc_mm.run.layout import METRICS


def rows(run_dir: Path) -> list[dict]:
    """Every whole row, in file order; a row without a numeric iteration and loss is skipped."""
    return [r for r in read_objects(Path(run_dir) / METRICS)
            if isinstance(r.get("iteration"), int) and isinstance(r.get("loss"), numbers.Real)]


def last(run_dir: Path) -> dict | None:
    found = rows(run_dir)
    return found[-1] if found else None


def write(run_dir: Path, row: dict) -> None:
    append(Path(run_dir) / METRICS, row)
