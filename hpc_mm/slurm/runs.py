"""Which run a user means: the one place a command's target becomes a run.

A target is a run directory, a sweep's folder, a job id (of any job that ran a run directory, an
array's id, or one array task's `<array>_<task>`), or nothing (the newest run under ./runs). Runs
started with plain `sbatch` are found by their job id too: recorded at their first start, or, while
still queued, by where Slurm writes their batch log.
"""

from __future__ import annotations

from pathlib import Path

from hpc_mm.environments.slurm import is_job_id
from hpc_mm.errors import UserError
from hpc_mm.run import known, layout
from hpc_mm.run.events import Kind
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir
from hpc_mm.slurm import query


def _created(run: RunDir) -> float:
    try:
        return run.info.created or run.path.stat().st_mtime
    except OSError:
        return 0.0


def runs(folder: Path = layout.RUNS) -> list[RunDir]:
    """Run directories under `folder` (a sweep's tasks included), newest first."""
    found = [RunDir(p) for p in folder.glob("*") if layout.is_run_dir(p)]
    for sweep in sweeps(folder):
        found += sweep.tasks()
    return sorted(found, key=_created, reverse=True)


def sweeps(folder: Path = layout.RUNS) -> list[SweepDir]:
    return [s for s in (SweepDir.at(p) for p in folder.glob("*") if SweepDir.is_sweep(p)) if s]


def find(target: str | None, folder: Path = layout.RUNS) -> RunDir | SweepDir:
    """The run (or sweep) `target` names; a UserError saying there is no such run otherwise."""
    if target is None:
        found = runs(folder)
        if not found:
            raise UserError.one("RUN_DIR", f"no runs under ./{folder}", "submit one, or pass a run directory")
        return RunDir(found[0].path.resolve())
    path = Path(target)
    if layout.is_run_dir(path):
        return RunDir(path.resolve())
    if SweepDir.at(path) is not None:
        return SweepDir.at(path)
    if path.exists():
        raise UserError.one(
            "RUN_DIR",
            f"{target} is not a run directory (no {layout.JOB_FILE})",
            "pass the run directory printed by submit, or a job id",
        )
    if is_job_id(target):
        found = _by_job_id(target, folder)
        if found is not None:
            return found
        raise UserError.one(
            "JOB_ID",
            f"no run under ./{folder} was submitted as job {target}",
            "pass the run directory instead (printed by submit)",
        )
    raise UserError.one("RUN_DIR", f"no such run: {target}", "pass a run directory, a sweep's folder or a job id")


def find_run(target: str | None, folder: Path = layout.RUNS) -> RunDir:
    """Like `find`, for commands that take one run (a sweep has several)."""
    found = find(target, folder)
    if isinstance(found, SweepDir):
        raise UserError.one(
            "RUN_DIR",
            f"{target} is a sweep of {len(found.tasks())} runs",
            f"pass one of its tasks, e.g. {found.path / 'task-0'}",
        )
    return found


def _by_job_id(job_id: str, folder: Path) -> RunDir | SweepDir | None:
    for sweep in sweeps(folder):
        if sweep.array == job_id:
            return sweep
    for run in runs(folder):
        if job_id in (run.info.job_id, *run.info.job_ids):
            return RunDir(run.path.resolve())
    noted = known.recall(job_id)  # submitted from another folder (run/known.py)
    if noted is not None and layout.is_run_dir(noted):
        return RunDir(noted)
    if noted is not None and SweepDir.at(noted) is not None:
        return SweepDir.at(noted)
    log = query.show_job(job_id).stdout  # <run dir>/logs/<batch log>, while Slurm remembers the job
    if log and layout.is_run_dir(Path(log).parent.parent):
        return RunDir(Path(log).parent.parent.resolve())
    return None


def job_of(run: RunDir) -> str | None:
    """The run's newest Slurm job: recorded at submit or at start, else (plain sbatch, still
    queued) the queued job whose batch log goes into the run's log folder."""
    if run.info.job_id:
        return run.info.job_id
    submitted = [e for e in run.events() if e.kind is Kind.SUBMITTED]
    if submitted and submitted[-1].get("mode") == "local":
        return None  # `hpc-mm local`: Slurm has nothing to say about it
    queued = query.queued_jobs_writing_to(str(run.logs.resolve()))
    return queued[-1] if queued else None
