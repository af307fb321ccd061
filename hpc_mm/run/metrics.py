"""metrics.jsonl as it grows: `Tail` reads each byte once (a follower polls it for hours).
Whole-file reading and writing are `RunDir.metrics` and `RunDir.write_metric`."""

from __future__ import annotations

import json
from pathlib import Path

from hpc_mm.run.records import Metric


class Tail:
    """The rows of a growing metrics.jsonl. A line still being written waits for its newline."""

    def __init__(self, path: Path):
        self.path, self.rows = Path(path), []
        self._offset, self._partial = 0, b""

    def read(self) -> list[Metric]:
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
            row = Metric.from_json(value) if isinstance(value, dict) else None
            if row is not None:
                self.rows.append(row)
        return self.rows
