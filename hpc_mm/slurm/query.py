"""Every command hpc-mm gives Slurm (sbatch, scontrol, squeue, sacct, scancel), and what Slurm
answers, as types: a `SlurmJob` with its `JobState`, whichever command answered.

Every command runs through `_run`, the one place a process is started; tests replace it with
outputs recorded on the real test cluster (tests/slurm/). Each call has a timeout; a command that
cannot run or does not answer is None, and each caller decides what an unreachable controller means
for it. sbatch is one command (`sbatch_command`, built by submitit, the submitter) for a submission,
a dry run (`--test-only`) and a chained start, run through `_run` like every other; hpc-mm follows
the job itself, with `jobs`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from hpc_mm.slurm.jobs import (
    ENDED,
    PATIENCE,
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    Answer,
    JobState,
    Preemption,
    SlurmJob,
    from_sacct,
    from_scontrol,
    from_squeue,
    last_line,
    parse_config,
    parse_fields,
    patience,
    unreachable,
)

# what Slurm answers, as types (slurm/jobs.py)
__all__ = ["ENDED", "JobState", "SlurmJob", "Preemption", "parse_config", "patience"]


NOT_INSTALLED = 127  # the shell's exit code for a command it cannot find
_said_missing: set[str] = set()


def _run(cmd: list[str], timeout: float = 30) -> Answer | None:
    """Run one Slurm command: its answer, or None when it could not run or did not answer in time.
    A Slurm command that is not installed is not a controller that does not answer: it is said once,
    at once, and never asked again."""
    if shutil.which(cmd[0]) is None:
        if not _said_missing:
            _said_missing.add(cmd[0])
            print(f"hpc-mm: note: Slurm is not installed here (no {cmd[0]}); Slurm is not asked", file=sys.stderr)
        return Answer(NOT_INSTALLED, "", f"{cmd[0]}: not installed here")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Answer(result.returncode, result.stdout, result.stderr)


def _ask(cmd: list[str], timeout: float = 30) -> Answer | None:
    """`_run`, asked again with backoff (1, 2, 4 ... 15 s) while the controller does not answer, for
    up to PATIENCE seconds; the last answer (None: it never answered)."""
    deadline, delay = time.monotonic() + PATIENCE["seconds"], 1.0
    while True:
        answer = _run(cmd, timeout)
        if not unreachable(answer) or time.monotonic() + delay > deadline:
            return answer
        print(
            f"hpc-mm: Slurm's controller did not answer {cmd[0]} ({answer.error if answer else 'no answer'}); "
            f"asking again in {delay:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)
        delay = min(15.0, delay * 2)


def _stdout(cmd: list[str]) -> str | None:
    answer = _ask(cmd)
    return answer.stdout if answer is not None and answer.ok else None


def _order(cmd: list[str], what: str) -> tuple[bool, str]:
    answer = _ask(cmd)
    if answer is None:
        return False, f"{what} did not answer"
    return answer.ok, "" if answer.ok else answer.error


def can_submit() -> bool:
    """Is sbatch on PATH?"""
    return shutil.which("sbatch") is not None


def available() -> bool:
    """Is there a Slurm here (sbatch on PATH) whose controller answers?"""
    if not can_submit():
        return False
    answer = _run(["scontrol", "ping"], timeout=20)
    return answer is not None and answer.ok


def show_job(job_id: str) -> SlurmJob:
    """`scontrol show job -o`: every field of a job Slurm still remembers."""
    out = _stdout(["scontrol", "show", "job", "-o", str(job_id)])
    return from_scontrol(str(job_id), out.splitlines()[0] if out and out.strip() else "")


_SACCT = ["-X", "-n", "-P", "-o", SACCT_FIELDS]
_SQUEUE = ["-h", "-r", "-o", SQUEUE_FIELDS]


def _sacct_rows(job_ids: list[str]) -> dict[str, SlurmJob]:
    return from_sacct(_stdout(["sacct", "-a", "-j", ",".join(job_ids), *_SACCT]) or "", job_ids)


def _squeue_rows(job_ids: set[str]) -> dict[str, SlurmJob]:
    return from_squeue(_stdout(["squeue", *_SQUEUE]) or "", job_ids)


def job(job_id: str) -> SlurmJob:
    """One job: sacct, else scontrol, else squeue; `source` None when none of them knows it."""
    job_id = str(job_id)
    found = _sacct_rows([job_id]).get(job_id)
    if found is not None:
        return found
    shown = show_job(job_id)
    if shown.known:
        return shown
    return _squeue_rows({job_id}).get(job_id) or SlurmJob(job_id)


def jobs(job_ids: list[str]) -> dict[str, SlurmJob]:
    """Many jobs at once (the status table): squeue for the queued and running ones (with the
    pending reason, time used and left), scontrol for how often a waiting one was requeued, sacct
    for the ended ones."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted:
        return {}
    out = _squeue_rows(wanted)
    for job_id, found in list(out.items()):
        if found.state.queued:
            out[job_id] = replace(found, restarts=show_job(job_id).restarts)
    ended = sorted(wanted - set(out))
    if ended:
        out.update(_sacct_rows(ended))
    return out


def queued_jobs_writing_to(folder: str) -> list[str]:
    """Jobs in the queue whose batch log goes into `folder` (a run started with plain sbatch
    is known by its log folder before it starts and records its id)."""
    out = _stdout(["squeue", "-h", "-r", "-O", "JobID:40,STDOUT:4096"])
    found = []
    for line in (out or "").splitlines():
        job_id, _, stdout = line.strip().partition(" ")
        if stdout.strip().startswith(folder.rstrip("/") + "/"):
            found.append(job_id)
    return found


def node_states(nodes: list[str]) -> dict[str, str]:
    """Slurm's state of each node (e.g. IDLE, ALLOCATED+NOT_RESPONDING, DOWN); {} if Slurm cannot say."""
    out = _stdout(["scontrol", "show", "node", "-o", ",".join(nodes)]) if nodes else None
    states = {}
    for line in (out or "").splitlines():
        fields = parse_fields(line)
        if "NodeName" in fields:
            states[fields["NodeName"]] = fields.get("State", "UNKNOWN")
    return states


def partition_nodes(partition: str) -> int | None:
    """How many nodes a partition has (None if Slurm cannot say)."""
    fields = parse_fields((_stdout(["scontrol", "show", "partition", "-o", partition]) or "").strip())
    total = fields.get("TotalNodes", "")
    return int(total) if total.isdigit() else None


def preemption(partition: str | None) -> Preemption | None:
    """The partition's PreemptMode and GraceTime (the cluster's when the partition does not set its
    own), and the cluster's KillWait; None if Slurm cannot say."""
    config = _stdout(["scontrol", "show", "config"])
    if not config:
        return None
    lines = _stdout(["scontrol", "show", "partition", "-o", *([partition] if partition else [])]) or ""
    return Preemption.read(config, lines, partition)


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (a job array's indices are below it); None if Slurm cannot say."""
    value = parse_config(_stdout(["scontrol", "show", "config"]) or "").get("MaxArraySize", "")
    return int(value) if value.isdigit() else None


def exclude_nodes(job_id: str, nodes: list[str]) -> tuple[bool, str]:
    """Keep a pending job off these nodes."""
    return _order(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(nodes)}"], "scontrol")


def requeue(job_id: str) -> tuple[bool, str]:
    """`scontrol requeue`; a job found pending when asked again: the first request went through unanswered."""
    ok, err = _order(["scontrol", "requeue", str(job_id)], "scontrol")
    return (True, "") if not ok and "pending execution" in err.lower() else (ok, err)


def release_hold(job_id: str) -> tuple[bool, str]:
    """Let a requeued job start as soon as it has nodes: Slurm holds a requeued job back for about
    two minutes (Reason=BeginTime); its owner may set its start time to now."""
    return _order(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], "scontrol")


def signal_batch(job_id: str, name: str) -> tuple[bool, str]:
    """Send signal `name` (USR1, ...) to the job's batch shell only, as Slurm's --signal=B: does."""
    return _order(["scancel", "--batch", f"--signal={name}", str(job_id)], "scancel")


def cancel(job_id: str) -> tuple[bool, str]:
    return _order(["scancel", str(job_id)], "scancel")


def test_only(script: str) -> tuple[bool, str]:
    """`sbatch --test-only`: Slurm checks partition, account, gres and size without queueing. The
    same command as a submission (`sbatch_command`), with one flag more."""
    with tempfile.TemporaryDirectory(prefix="hpc-mm-test-only-") as folder:
        path = Path(folder) / "test-only.sbatch"
        path.write_text(script)
        answer = _ask(sbatch_command(path, ["--test-only"]), timeout=60)
    if answer is None:
        return False, "sbatch did not answer"
    return answer.ok, (answer.stderr or answer.stdout).strip()


def submit_continuation(script: str, name: str, restart: int, exclude: list[str]) -> tuple[str | None, str]:
    """A new job for the next start of a run (requeue.mode: chain): it waits for the current one
    to end (--dependency=singleton: same name and user), and counts its start itself."""
    options = [
        "--dependency=singleton",
        f"--job-name={name}",
        f"--export=ALL,HPC_MM_RESTART={restart}",
        *([f"--exclude={','.join(exclude)}"] if exclude else []),
    ]
    answer = _ask(sbatch_command(Path(script), options), timeout=60)
    if answer is None:
        return None, "sbatch did not answer"
    if not answer.ok:
        return None, answer.error
    job_id = submitit_job_id(answer.stdout)
    return (job_id, "") if job_id else (None, f"sbatch said no job id: {last_line(answer.stdout)}")


class Refused(Exception):
    """sbatch refused a submission; the message is its last line."""


def submit(folder: Path, script: str) -> str:
    """Submit `script` as submitit does (its submission file kept in submitit's `folder` as
    `<job id>_submission.sh`); the job id. Raises `Refused`."""
    from submitit.core.utils import JobPaths

    folder.mkdir(exist_ok=True)
    path = folder / f".submission_file_{uuid.uuid4().hex}.sh"
    path.write_text(script)
    try:
        answer = _ask(sbatch_command(path), timeout=60)
        if answer is None or not answer.ok:
            raise Refused(answer.error if answer is not None else "sbatch did not answer")
        job_id = submitit_job_id(answer.stdout)
        if job_id is None:
            raise Refused(f"sbatch said no job id: {last_line(answer.stdout)}")
        JobPaths(folder, job_id).move_temporary_file(path, "submission_file")
        return job_id
    finally:
        path.unlink(missing_ok=True)


# submitit (the design's submitter) builds the sbatch command and reads the job id from sbatch's
# answer; these two members are not public in submitit, so they are reached here and only here,
# with submitit pinned in setup.cfg and tests/unit/test_submitit_seam.py failing the day they change.
def sbatch_command(script: Path, options: list[str] = ()) -> list[str]:
    """submitit's sbatch command for `script`, with hpc-mm's `options` after `sbatch`."""
    from submitit import SlurmExecutor

    command = SlurmExecutor._make_submission_command(None, script)  # it reads nothing of the executor
    return [command[0], *options, *command[1:]]


def submitit_job_id(said: str) -> str | None:
    """The job id in sbatch's answer, read as submitit reads it; None if there is none."""
    from submitit import SlurmExecutor
    from submitit.core.utils import FailedSubmissionError

    try:
        return SlurmExecutor._get_job_id_from_submission_command(said)
    except FailedSubmissionError:
        return None
