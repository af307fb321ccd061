"""Every question and order to Slurm's controller: scontrol, sacct, squeue, scancel, and
the one table of job states.

Each call has a timeout and returns None (or False) when Slurm cannot be asked, so a caller
decides what an unreachable controller means for it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

# Slurm's job states, by what they mean for a run.
FINAL_OK = frozenset({"COMPLETED"})
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE"})
# A job preempted with PreemptMode=REQUEUE shows PREEMPTED for a moment and then runs
# again, so PREEMPTED counts as unfinished (as submitit counts it).
UNFINISHED = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SUSPENDED",
                        "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"})
_FIELD = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w:/.]*)=")


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _stdout(cmd: list[str]) -> str | None:
    result = _run(cmd)
    return result.stdout if result is not None and result.returncode == 0 else None


def available() -> bool:
    """Is there a Slurm here (sbatch on PATH) whose controller answers?"""
    if shutil.which("sbatch") is None:
        return False
    result = _run(["scontrol", "ping"], timeout=20)
    return result is not None and result.returncode == 0


def parse_fields(line: str) -> dict:
    """``Key=Value Key2=Value with spaces`` (scontrol's one-line form) -> dict."""
    starts = list(_FIELD.finditer(line.strip()))
    text = line.strip()
    out = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        out[match.group(1)] = text[match.end():end].rstrip()
    return out


def show_job(job_id: str) -> dict:
    """`scontrol show job -o`: every field of a job Slurm still remembers; {} otherwise."""
    out = _stdout(["scontrol", "show", "job", "-o", str(job_id)])
    return parse_fields(out.splitlines()[0]) if out and out.strip() else {}


def job_state(job_id: str) -> dict:
    """{'state', 'exit_code', 'nodes', 'nodelist', 'source'} from sacct, else scontrol, else squeue."""
    job_id = str(job_id)
    out = _stdout(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NNodes,NodeList"])
    rows = [line.split("|") for line in (out or "").splitlines() if line.split("|")[0] == job_id]
    if rows:
        _, state, exit_code, nodes, nodelist = rows[-1]
        return {"state": state.split()[0], "exit_code": exit_code, "nodes": int(nodes or 0),
                "nodelist": nodelist, "source": "sacct"}
    fields = show_job(job_id)
    if fields:
        return {"state": fields.get("JobState", "UNKNOWN"), "exit_code": fields.get("ExitCode"),
                "nodes": int(fields.get("NumNodes", "0").split("-")[0] or 0), "nodelist": fields.get("NodeList"),
                "source": "scontrol"}
    out = _stdout(["squeue", "-h", "-j", job_id, "-o", "%T|%D|%N"])
    if out and out.strip():
        state, nodes, nodelist = out.strip().split("|")
        return {"state": state, "exit_code": None, "nodes": int(nodes), "nodelist": nodelist, "source": "squeue"}
    return {"state": "UNKNOWN", "exit_code": None, "nodes": None, "nodelist": None, "source": None}


def batch_log(job_id: str) -> str | None:
    """The batch log's path, while Slurm remembers the job (the run directory holds it)."""
    return show_job(job_id).get("StdOut") or None


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


def hostnames(nodelist: str) -> list[str]:
    out = _stdout(["scontrol", "show", "hostnames", nodelist]) if nodelist else None
    return out.split() if out else []


def partition_nodes(partition: str) -> int | None:
    """How many nodes a partition has (None if Slurm cannot say)."""
    fields = parse_fields((_stdout(["scontrol", "show", "partition", "-o", partition]) or "").strip())
    value = fields.get("TotalNodes", "")
    return int(value) if value.isdigit() else None


def exclude_nodes(job_id: str, nodes: list[str]) -> tuple[bool, str]:
    """Keep a pending job off these nodes."""
    result = _run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(nodes)}"])
    if result is None:
        return False, "scontrol did not answer"
    return result.returncode == 0, result.stderr.strip()


def submit_continuation(script: str, name: str, restart: int, exclude: list[str]) -> tuple[str | None, str]:
    """A new job for the next start of a run (requeue.mode: chain): it waits for the current one
    to end (--dependency=singleton: same name and user), and counts its start itself."""
    cmd = ["sbatch", "--parsable", "--dependency=singleton", f"--job-name={name}",
           f"--export=ALL,HPC_MM_RESTART={restart}"]
    if exclude:
        cmd.append(f"--exclude={','.join(exclude)}")
    result = _run([*cmd, script], timeout=60)
    if result is None:
        return None, "sbatch did not answer"
    if result.returncode != 0:
        return None, result.stderr.strip()
    return result.stdout.strip().split(";")[0], ""


def requeue(job_id: str) -> tuple[bool, str]:
    result = _run(["scontrol", "requeue", str(job_id)])
    if result is None:
        return False, "scontrol did not answer"
    return result.returncode == 0, result.stderr.strip()


def signal_batch(job_id: str, name: str) -> tuple[bool, str]:
    """Send signal `name` (USR1, ...) to the job's batch shell only, as Slurm's --signal=B: does."""
    result = _run(["scancel", "--batch", f"--signal={name}", str(job_id)])
    if result is None:
        return False, "scancel did not answer"
    return result.returncode == 0, result.stderr.strip()


def cancel(job_id: str) -> tuple[bool, str]:
    result = _run(["scancel", str(job_id)])
    if result is None:
        return False, "scancel did not answer"
    return result.returncode == 0, result.stderr.strip()


def _clock_seconds(value: str) -> float | None:
    """squeue's times: [D-]HH:MM:SS or MM:SS; None for UNLIMITED, INVALID, NOT_SET."""
    days, _, clock = value.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def jobs(job_ids: list[str]) -> dict[str, dict]:
    """Many jobs at once (the status table): squeue for the queued and running ones (with the
    pending reason, time used and left, restarts), sacct for the ended ones."""
    wanted = {str(j) for j in job_ids if j}
    out: dict[str, dict] = {}
    if not wanted:
        return out
    for line in (_stdout(["squeue", "-h", "-r", "-o", "%i|%T|%r|%M|%L|%D|%N"]) or "").splitlines():
        job_id, state, reason, used, left, nodes, nodelist = (line.split("|") + [""] * 7)[:7]
        if job_id in wanted:
            out[job_id] = {"state": state, "reason": None if reason in ("None", "") else reason,
                           "elapsed_seconds": _clock_seconds(used), "left_seconds": _clock_seconds(left),
                           "nodes": int(nodes) if nodes.isdigit() else None, "nodelist": nodelist or None,
                           "exit_code": None, "source": "squeue"}
    for job_id, info in out.items():
        if info["state"] in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
            restarts = show_job(job_id).get("Restarts", "")
            info["restarts"] = int(restarts) if restarts.isdigit() else None
    ended = sorted(wanted - set(out))
    if ended:
        rows = _stdout(["sacct", "-X", "-n", "-P", "-j", ",".join(ended), "-o",
                        "JobID,State,ExitCode,NNodes,NodeList,ElapsedRaw"]) or ""
        for line in rows.splitlines():
            job_id, state, exit_code, nodes, nodelist, elapsed = (line.split("|") + [""] * 6)[:6]
            if job_id in wanted:
                out[job_id] = {"state": state.split()[0] if state else "UNKNOWN", "reason": None,
                               "exit_code": exit_code or None, "nodes": int(nodes) if nodes.isdigit() else None,
                               "nodelist": nodelist or None,
                               "elapsed_seconds": float(elapsed) if elapsed.isdigit() else None,
                               "left_seconds": None, "source": "sacct"}
    return out
