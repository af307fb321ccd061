"""The run directory: one per run, the place every part of a run writes to. Every name in it
is defined here and nowhere else.

    runs/<name>-<time>/
      job.yaml          the resolved job (absolute paths, every default filled)
      job.sbatch        the script that was submitted or rendered (plain `sbatch` works on it)
      mm/, config/      copies of the files the entry reads (the mm JSON files, the FSDP2 trainer's YAML:
                        job/entries/), and what it reads at each start (config/trainer.yaml)
      code/, code.json  the entry's code as submitted, and its commit (snapshot.py)
      run.json          marks the folder as a run directory; the Slurm job id (recorded at submit,
                        or at start for plain sbatch)
      run.lock          held by the run's leader while it runs (lock.py)
      logs/             batch log, and one log per task and restart
      checkpoints/      Megatron layout (unless checkpoint.dir says elsewhere)
      events.jsonl      the record of the run's life (events.py)
      metrics.jsonl     one line per training iteration
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpc_mm import __version__
from hpc_mm.errors import Problem, UserError, warn
from hpc_mm.job.entries import contract
from hpc_mm.job.jobfile import job_text
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import snapshot
from hpc_mm.run.atomic import PRIVATE, write_atomic
from hpc_mm.run.records import RunInfo, read_object

JOB_FILE = "job.yaml"
SCRIPT_FILE = "job.sbatch"
RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
LOGS = "logs"
EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"  # every start's TensorBoard events: one run in TensorBoard (tensorboard.py)
HEARTBEATS = "heartbeats"  # one small file per node and start, while the step runs (launch/watchdog.py)
STANDBY = "standby"  # one file per node of a job holding standby interpreters (launch/standby.py)
PREFLIGHT = "preflight"  # one result per node and start (launch/preflight.py)
NOTIFICATIONS = "notifications.jsonl"  # every delivery of a notification (run/notify.py)
REPORT_FIGURE = "report.png"  # hpc-mm report (a run's, or a sweep folder's)
GOODPUT_FIGURE = "goodput.png"  # hpc-mm goodput RUN_DIR
SUBMITIT = "submitit"  # submitit's own files for the submission
TASK = "task-{}"  # a sweep's task i, in the sweep's folder
EXCLUDE_FILE = ".step-exclude"  # + -<job id>: the nodes `finish` leaves out of the next start inside the job
CANCEL_FILE = "cancel.json"  # `hpc-mm cancel` asked the run to stop (finish then records `cancelled`)
SWEEP_FILE = "sweep.json"  # in a sweep's folder: the job array and its tasks (slurm/sweep.py)
RUNS = Path("runs")  # where new runs go, relative to the working directory

# Slurm fills %x (job name), %j (job id), %t (task); the batch script fills the restart.
# Under `hpc-mm local`, this variable names each launch's log (%t: its task), as srun --output does.
TASK_LOG = "HPC_MM_TASK_LOG"
RANK_TIMES = "HPC_MM_RANK_TIMES"  # "1": the built-in trainer writes each rank's compute time per step
PROGRESS_FILE = "HPC_MM_PROGRESS_FILE"  # the entry may touch it to tell the hang watchdog it moved on
BATCH_LOG = "%x-%j.batch.out"
# <name>-<job>-r<restart>-t<task>.out: the job as its records name it (an array task: <array>_<task>)
_TASK_LOG = re.compile(r"-(?P<job>[^-]+)-r(?P<restart>\d+)-t(?P<task>\d+)\.out$")


@dataclass(frozen=True)
class TaskLog:
    job: str  # the job's id as its records name it
    restart: int
    task: int


def task_log_parts(name: str, array: bool = False) -> tuple[str, str]:
    """One log per task and start, ``<name>-<job>-r<restart>-t%t.out``: the text before and after
    the restart number, which the batch shell fills in. A job array's task is `%A_%a`, as its
    records and Slurm's tools name it (its own %j is another number)."""
    return f"{name}-{'%A_%a' if array else '%j'}-r", "-t%t.out"


def local_task_log(name: str, job_id: str, restart: int) -> str:
    """The log of each emulated node under `hpc-mm local` (%t: its task)."""
    return f"{LOGS}/{name}-{job_id}-r{restart}-t%t.out"


def parse_task_log(filename: str) -> TaskLog | None:
    """(job, restart, task) of a task log's file name, or None for any other file."""
    match = _TASK_LOG.search(filename)
    return TaskLog(match["job"], int(match["restart"]), int(match["task"])) if match else None


def default_run_dir(spec: JobSpec) -> Path:
    return RUNS / f"{spec.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def checkpoint_dir(spec: JobSpec, run_dir: Path, resolve: bool = True) -> Path:
    """Where the run's checkpoints go: `--save` and `--load` of the entry (`resolve`: from the
    run directory's real path; not for a placeholder shown before the run has one)."""
    if spec.resume.dir:  # an entry that keeps its own checkpoints (resume:)
        return Path(spec.resume.dir)
    if spec.checkpoint.dir:
        return Path(spec.checkpoint.dir)
    return (Path(run_dir).resolve() if resolve else Path(run_dir)) / CHECKPOINTS


def tensorboard_dir(run_dir: Path) -> Path:
    """Where the run's TensorBoard events go (Megatron's --tensorboard-dir unless the job names its own)."""
    return Path(run_dir) / TENSORBOARD


def lock_file(run_dir: Path) -> Path:
    """The lock the run's holder keeps (run/lock.py); built before the run directory may exist."""
    return Path(run_dir) / LOCK_FILE


@dataclass(frozen=True)
class RunFiles:
    """What a run directory will hold, built in memory before anything is written."""

    run_dir: Path
    files: dict[str, str] = field(default_factory=dict)  # name in the run directory -> text
    code: snapshot.Code | None = None  # the entry's code, copied into the run when it is created


def plan_run(spec: JobSpec, run_dir: Path | None, new_code: bool = False) -> RunFiles:
    """The resolved job file, and copies of the files its entry reads (the mm JSON files, the FSDP2
    trainer's YAML, ...: job/entries/), which the run's job file points at: every restart of the run
    reads the same configuration, whatever happens to the originals. (Paths inside them stay relative
    to entry.workdir, as MindSpeed-MM reads them.) The entry's code likewise (run/snapshot.py): the
    job file points entry.workdir into the run's copy of its checkout; a run directory holding other
    code is refused unless `new_code`."""
    run_dir = Path(run_dir or default_run_dir(spec)).resolve()
    recorded, copies = with_copies(spec, run_dir)
    code = snapshot.state(spec.entry.workdir) if snapshot.applies(spec) else None
    if code is not None:
        snapshot.check_same(spec, run_dir, code, new_code)
        entry = dataclasses.replace(recorded.entry, workdir=code.entry_workdir(run_dir))
        recorded = dataclasses.replace(recorded, entry=entry)
    return RunFiles(
        run_dir, {JOB_FILE: job_text(recorded), **{name: Path(o).read_text() for name, o in copies.items()}}, code
    )


def with_copies(spec: JobSpec, run_dir: Path) -> tuple[JobSpec, dict[str, str]]:
    """The job as the run directory records it, pointing at its copies of the files the entry reads
    (what every start, and so the entry, gets); and those copies (name in the run -> the original)."""
    copies, recorded = {}, spec
    for key, name in contract(spec).copies(spec).items():
        section, field_name = key.split(".")
        original = getattr(getattr(spec, section), field_name)
        if original and Path(original).is_file():
            copies[name] = original
            part = dataclasses.replace(getattr(recorded, section), **{field_name: str(Path(run_dir) / name)})
            recorded = dataclasses.replace(recorded, **{section: part})
    return recorded, copies


@dataclass
class Created:
    """A run directory just written; `undo()` takes it back (a refused submission leaves nothing)."""

    run_dir: Path
    new: bool  # the folder did not exist, or was empty
    previous: dict[str, str | None]
    existed: bool = True
    code_before: str | None = None  # code.json before (a run resubmitted with --new-code)

    def undo(self) -> None:
        if self.new:
            if self.existed:  # it was an empty folder of the user's: leave it empty
                for child in self.run_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for name, text in {**self.previous, snapshot.CODE_FILE: self.code_before}.items():
            path = self.run_dir / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_private(path, text)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner and group can read: the job's files hold its environment."""
    write_atomic(path, text, mode=PRIVATE)


def create(run: RunFiles) -> Created:
    """Write the run directory (and its logs/ folder) with the files planned for it."""
    run_dir = run.run_dir
    refuse_foreign(run_dir)
    existed = run_dir.exists()
    new = not existed or not any(p.name != LOCK_FILE for p in run_dir.iterdir())
    previous = {name: (run_dir / name).read_text() if (run_dir / name).is_file() else None for name in run.files}
    code_file = run_dir / snapshot.CODE_FILE
    code_before = code_file.read_text() if code_file.is_file() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOGS).mkdir(exist_ok=True)
    if new:  # not readable by others: the job file and the script hold the job's environment
        os.chmod(run_dir, 0o750)
        os.chmod(run_dir / LOGS, 0o750)
    for name, text in run.files.items():
        write_private(run_dir / name, text)
    if RUN_FILE not in run.files:
        info = RunInfo.from_json(read_object(run_dir / RUN_FILE) or {})
        info = dataclasses.replace(info, hpc_mm=__version__, created=info.created or round(time.time(), 3))
        write_private(run_dir / RUN_FILE, json.dumps(info.to_json()))
    if run.code is not None:
        snapshot.take(run.code, run_dir)
        if run.code.untracked:
            shown = ", ".join(run.code.untracked[:5]) + (" ..." if len(run.code.untracked) > 5 else "")
            warn(
                Problem(
                    "entry.snapshot",
                    f"{len(run.code.untracked)} untracked path(s) of {run.code.source} are not in the run's copy "
                    f"of the code but linked to the checkout (they change with it): {shown}",
                    "commit them, or list them in .gitignore if they are data",
                )
            )
    return Created(run_dir, new, previous, existed, code_before)


def refuse_foreign(run_dir: Path) -> None:
    """A folder that holds files but is not a run directory is someone's work: a `--run-dir`
    pointing at the folder of the job file itself must not write over it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError.one("--run-dir", f"{run_dir} is a file, not a folder", "pass a new or a run directory")
    if run_dir.is_dir() and not is_run_dir(run_dir) and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UserError.one(
            "--run-dir",
            f"{run_dir} holds files and is not a run directory (no {RUN_FILE})",
            "pass a new folder, or the run directory of an earlier run to continue it",
        )


def is_run_dir(path: Path) -> bool:
    return (Path(path) / JOB_FILE).is_file() and (Path(path) / RUN_FILE).is_file()
