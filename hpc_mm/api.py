"""hpc-mm from Python: what the command line does, as calls that return values.

    import hpc_mm

    job = hpc_mm.load_job("jobs/tiny-vlm.yaml", set={"gpt.lr": 1e-3}, nodes=2)
    run = hpc_mm.submit(job)                 # a Run: its job id and run directory
    run.wait()                               # until it ends (its state as RunStatus)
    run.metrics()[-1].loss                   # the last logged iteration
    [r.status().state for r in hpc_mm.runs()]

Nothing here prints. Problems the command line prints as `error:` lines raise `hpc_mm.UserError`,
whose `.problems` are the same (field, message, hint); warnings are Python warnings
(`HpcMmWarning`). This is the layer the command line itself calls for `submit`, `status` and
`cancel`, and what a sweep driver (Optuna, Ray Tune, a notebook, a shell loop) would call.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from hpc_mm.errors import Problem, UserError
from hpc_mm.job.spec import JobSpec
from hpc_mm.names import RunState
from hpc_mm.run import layout
from hpc_mm.run.events import Event
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir
from hpc_mm.slurm import pipeline as pipelines
from hpc_mm.slurm import runs as found_runs
from hpc_mm.slurm.table import RunStatus

__all__ = [
    "HpcMmWarning",
    "Problem",
    "Run",
    "Sweep",
    "UserError",
    "load_job",
    "pipeline",
    "run",
    "runs",
    "submit",
    "submit_sweep",
    "sweep_with",
]


class HpcMmWarning(UserWarning):
    """Something about a job that may be right but usually is not (the CLI's `warning:` lines)."""


def _warn(problem: Problem) -> None:
    warnings.warn(str(problem), HpcMmWarning, stacklevel=3)


def _overrides(set: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """`{"gpt.lr": 1e-4}` or `["gpt.lr=1e-4"]` as --set items (values as YAML reads them)."""
    import json

    if set is None:
        return []
    if isinstance(set, Mapping):
        if not all(isinstance(key, str) for key in set):
            raise UserError.one("set", "has a key that is not text", 'e.g. set={"gpt.lr": 1e-4}')
        try:
            return [f"{key}={json.dumps(value)}" for key, value in set.items()]
        except (TypeError, ValueError) as exc:
            raise UserError.one("set", f"a value is not plain data ({exc})", "numbers, text, lists, mappings") from None
    if isinstance(set, (str, bytes)) or not isinstance(set, Iterable) or not all(isinstance(i, str) for i in set):
        raise UserError.one(
            "set", f"is {type(set).__name__}, not a mapping or a list of KEY=VALUE", 'e.g. set={"gpt.lr": 1e-4}'
        )
    return list(set)


def _job_path(value, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip():
        raise UserError.one(where, f"is {type(value).__name__}, not a path", "e.g. 'jobs/tiny-vlm.yaml'")
    return Path(value)


def _count(value, where: str, auto: bool = False) -> None:
    if value is None or (auto and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError.one(where, f"{value!r} is not a positive integer" + (" or 'auto'" if auto else ""))


def load_job(
    path: str | os.PathLike,
    set: Mapping[str, Any] | Iterable[str] | None = None,
    nodes: int | None = None,
    nproc_per_node: int | str | None = None,
) -> JobSpec:
    """Read and check a job file, as `hpc-mm validate` does; `set` overrides values (--set)."""
    from hpc_mm.job.jobfile import load_job as load
    from hpc_mm.job.rules import advice

    _count(nodes, "nodes")
    _count(nproc_per_node, "nproc_per_node", auto=True)
    spec = load(_job_path(path, "path"), _overrides(set), nodes, nproc_per_node)
    for problem in advice(spec):
        _warn(problem)
    return spec


@dataclass(frozen=True)
class Run:
    """A run directory (it may hold several Slurm jobs: resubmissions, requeues as new jobs)."""

    path: Path

    @property
    def _dir(self) -> RunDir:
        return RunDir(self.path)  # read afresh each time: the nodes write as the run goes

    @property
    def job_id(self) -> str | None:
        """The newest Slurm job of the run."""
        return found_runs.job_of(self._dir)

    @property
    def name(self) -> str:
        return self._dir.job.name

    def status(self) -> RunStatus:
        """State (Slurm's, else the record's), restarts, iteration, loss, checkpoint, time left, ETA."""
        from hpc_mm.slurm.status import run_status

        return run_status(self._dir)

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Follow the run's newest job until it ends (lifting Slurm's hold after a requeue, as
        `submit --wait` does); its status then. TimeoutError after `timeout` seconds (the job goes on)."""
        from hpc_mm.slurm.wait import wait

        job_id = self.job_id
        if job_id is None:
            raise UserError.one("RUN_DIR", f"{self.path} has no Slurm job", "submit it first")
        wait([(job_id, self.path)], quiet=True, timeout=timeout)
        return self.status()

    @property
    def state(self) -> RunState:
        """The run's state, as `status()` has it (one type for both)."""
        return self.status().state

    def cancel(self, now: bool = False) -> list[str]:
        """Stop the run's job: it saves a checkpoint first (unless `now`); what happened, line by line."""
        from hpc_mm.slurm.cancel import cancel

        said: list[str] = []
        cancel(str(self.path), now=now, say=said.append)
        return said

    def metrics(self) -> list[Metric]:
        """Every logged iteration: loss, learning rate, grad norm, step time, samples/s, ..."""
        return self._dir.metrics()

    def events(self) -> list[Event]:
        """The run's record: every start, checkpoint, requeue, restart and how each start ended."""
        return self._dir.events()


@dataclass(frozen=True)
class Sweep:
    """A job array: a Run a task, with the values it was given."""

    path: Path
    job_id: str
    tasks: tuple[Run, ...]
    values: tuple[dict, ...]

    def wait(self, timeout: float | None = None) -> list[RunStatus]:
        from hpc_mm.slurm.wait import wait

        wait([(run.job_id, run.path) for run in self.tasks], quiet=True, timeout=timeout)
        return [run.status() for run in self.tasks]


def _spec(job: JobSpec | str | os.PathLike, set=None, nodes=None) -> JobSpec:
    if isinstance(job, JobSpec):
        if set or nodes:
            raise TypeError("set= and nodes= go to load_job; submit() was given a loaded job")
        return job
    return load_job(job, set, nodes)


def submit(
    job: JobSpec | str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    *,
    after: Iterable[str] = (),
    set: Mapping[str, Any] | Iterable[str] | None = None,
    nodes: int | None = None,
    template_dir: str | os.PathLike | None = None,
    new_code: bool = False,
) -> Run:
    """Submit a job (a loaded JobSpec, or a job file's path) to Slurm; its Run. `after`: job ids or
    run directories it waits for (afterok). `new_code`: into a run directory whose code (its copy of
    the entry's checkout) differs from the checkout's now, run the new code from the next start."""
    import dataclasses

    from hpc_mm.slurm.submit import submit as submit_one

    spec = _spec(job, set, nodes)
    if after:
        spec = dataclasses.replace(spec, after=list(spec.after) + [str(a) for a in after])
    done = submit_one(spec, _path(run_dir), _path(template_dir), on_warning=_warn, new_code=new_code)
    return Run(done.run_dir)


def pipeline(
    jobs: Iterable[JobSpec | str | os.PathLike],
    *,
    after: Iterable[str] = (),
    template_dir: str | os.PathLike | None = None,
) -> list[Run]:
    """Submit stages that run one after another (each waits for the one before it unless its job
    file's `after:` says otherwise); a stage whose predecessor fails is cancelled by Slurm."""
    from hpc_mm.slurm.submit import submit as submit_one

    specs = pipelines.chain([_spec(j) for j in jobs], [str(a) for a in after])
    stages: dict[str, tuple[str, str]] = {}
    out = []
    for spec in specs:
        done = submit_one(spec, None, _path(template_dir), stages=stages, on_warning=_warn)
        stages[spec.name] = (done.job_id, str(done.run_dir))
        out.append(Run(done.run_dir))
    return out


def submit_sweep(
    path: str | os.PathLike,
    sweep: Mapping[str, Iterable[Any]],
    run_dir: str | os.PathLike | None = None,
    *,
    set: Mapping[str, Any] | Iterable[str] | None = None,
    nodes: int | None = None,
    zip: bool = False,
    max_parallel: int | None = None,
    template_dir: str | os.PathLike | None = None,
) -> Sweep:
    """One Slurm job array over the values of `sweep` ({key: values}; every combination, or with
    `zip` the i-th values together); at most `max_parallel` tasks run at once."""
    if not isinstance(sweep, Mapping) or not sweep:
        raise UserError.one("sweep", "must be a mapping {key: [values, ...]} with at least one key")
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise UserError.one("max_parallel", f"{max_parallel!r} is not a positive integer")
    items = []
    for key, values in sweep.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise UserError.one(f"sweep.{key}", "must be a list of values", f"e.g. {{{key!r}: [1, 2]}}")
        values = [json.dumps(v) if not isinstance(v, str) else v for v in values]
        if any("," in v for v in values):  # --sweep splits at commas: a value holding one is not a value
            raise UserError.one(f"sweep.{key}", "a value holds a comma, which separates values", "sweep another key")
        items.append(f"{key}={','.join(values)}")
    overrides = _overrides(set)
    return sweep_with(
        lambda extra: load_job(path, overrides + extra, nodes), items, run_dir, zip, max_parallel, template_dir
    )


def sweep_with(load, items: list[str], run_dir=None, zipped=False, max_parallel=None, template_dir=None) -> Sweep:
    """`submit_sweep` for a caller that loads the job itself: `load(["key=value", ...])` returns the
    job with those values set; `items` are --sweep's `KEY=V1,V2,...`."""
    from hpc_mm.slurm.submit import submit_sweep as submit_array

    done = submit_array(
        load, load([]), items, _path(run_dir), _path(template_dir), max_parallel=max_parallel, zipped=zipped
    )
    return Sweep(done.run_dir, done.job_id, tuple(Run(r) for _, r, _ in done.tasks), tuple(v for _, _, v in done.tasks))


def run(target: str | os.PathLike | None = None, root: str | os.PathLike = layout.RUNS) -> Run:
    """The run a run directory or Slurm job id names (default: the newest under `root`)."""
    found = found_runs.find(None if target is None else str(target), Path(root))
    if isinstance(found, SweepDir):
        raise UserError.one("RUN_DIR", f"{found.path} is a sweep", "use its tasks' run directories")
    return Run(found.path)


def runs(root: str | os.PathLike = layout.RUNS) -> list[Run]:
    """Every run under `root` (default ./runs), newest first; a sweep's tasks each."""
    return [Run(r.path.resolve()) for r in found_runs.runs(Path(root))]


def _path(value) -> Path | None:
    return None if value is None else Path(value)
