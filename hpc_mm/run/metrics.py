"""metrics.jsonl: one line per training iteration (iteration, loss, lr, grad norm, throughput)."""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from hpc_mm.run.events import append, read_objects
from hpc_mm.run.layout import METRICS


def _whole(row: dict) -> bool:
    return isinstance(row.get("iteration"), int) and isinstance(row.get("loss"), numbers.Real)


def rows(run_dir: Path) -> list[dict]:
    """Every whole row, in file order; a row without a numeric iteration and loss is skipped."""
    return [r for r in read_objects(Path(run_dir) / METRICS) if _whole(r)]


class Tail:
    """The rows of a growing metrics.jsonl, each byte read once (a follower polls it every
    fraction of a second for hours). A line still being written waits for its newline."""

    def __init__(self, run_dir: Path):
        self.path, self.rows = Path(run_dir) / METRICS, []
        self._offset, self._partial = 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
                self._offset = f.tell()
        except OSError:
            return self.rows
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                value = json.loads(line.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if isinstance(value, dict) and _whole(value):
                self.rows.append(value)
        return self.rows


def last(run_dir: Path) -> dict | None:
    found = rows(run_dir)
    return found[-1] if found else None


def write(run_dir: Path, row: dict) -> None:
    append(Path(run_dir) / METRICS, row)
