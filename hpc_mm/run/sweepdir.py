"""A sweep's folder: one job array, a run directory per task (`task-<i>/`), and `sweep.json` (the
array's id, each task's job id, values and run directory). `SweepDir` builds every path in it, as
`RunDir` does in a run's; `label` is how a task's values are shown everywhere."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hpc_mm.run import layout
from hpc_mm.run.atomic import write_atomic
from hpc_mm.run.records import read_object
from hpc_mm.run.rundir import RunDir


def label(values: Mapping[str, object], short: bool = False) -> str:
    """A task's values as `key=value ...` (`short`: the last part of each key, `lr=1e-4`)."""
    return " ".join(f"{k.rsplit('.', 1)[-1] if short else k}={v}" for k, v in values.items())


@dataclass(frozen=True)
class SweepDir:
    path: Path
    array: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sweep_file(self) -> Path:
        return self.path / layout.SWEEP_FILE

    @property
    def submitit_folder(self) -> Path:
        return self.path / layout.SUBMITIT

    @property
    def report_figure(self) -> Path:
        """The sweep's loss curves, every task on one figure (`hpc-mm report SWEEP`)."""
        return self.path / layout.REPORT_FIGURE

    def task_dir(self, task: int | str) -> Path:
        """Task `task`'s run directory (`"%a"`: Slurm's pattern for every task of the array)."""
        return self.path / layout.TASK.format(task)

    def tasks(self) -> list[RunDir]:
        found = [RunDir(p) for p in self.path.glob(layout.TASK.format("*")) if layout.is_run_dir(p)]
        return sorted(found, key=lambda r: (r.info.task if r.info.task is not None else 1 << 30, r.name))

    def write(self, array: str, listing: list[dict], max_parallel: int | None = None) -> None:
        said = {"array": array, "tasks": listing, **({"max_parallel": max_parallel} if max_parallel else {})}
        write_atomic(self.sweep_file, json.dumps(said))

    @classmethod
    def at(cls, path: str | os.PathLike) -> SweepDir | None:
        """The sweep whose folder is `path`, or None where it holds no readable sweep.json."""
        value = read_object(Path(path) / layout.SWEEP_FILE)
        if value is None:
            return None
        array = value.get("array")
        return cls(Path(path).resolve(), str(array) if array is not None else None)

    @staticmethod
    def is_sweep(path: str | os.PathLike) -> bool:
        return (Path(path) / layout.SWEEP_FILE).is_file()
