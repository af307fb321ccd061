"""Emulate a multi-node job on one machine with mpirun.

mpirun starts one `hpc-mm launch` per emulated node; each finds itself in the MPI
environment, the ranks agree on rank 0's host and a free port through mpi4py, and each
runs its node's torchrun (or, with launcher srun, one process per rank).

Stopping works as on Slurm: Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP to `hpc-mm local` reach every
rank as the exit signal (through mpirun, which forwards SIGUSR1), the job saves a checkpoint
and ends, and the run records `stopped`; a second signal stops mpirun at once. mpirun runs in a
session of its own, so a terminal's Ctrl-C reaches only us, and it and torchrun keep their
temporary files in a folder that is removed when the run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec, nproc_hint
from hpc_mm.run import events, layout, lock
from hpc_mm.slurm.submit import refuse_if_active

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def mpirun_command(spec: JobSpec, run_dir: Path, mpirun: str = "mpirun") -> list[str]:
    if spec.entry.launcher == "torchrun":
        processes = spec.nnodes  # one agent per emulated node; torchrun starts the ranks
    else:
        processes = spec.nnodes * (nproc_hint(spec) or 1)
    cmd = [mpirun, "-np", str(processes), "--oversubscribe", "--bind-to", "none", "-x", "PATH", "-x", "PYTHONPATH",
           "-x", "TMPDIR", "-x", lock.INHERITED]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # Open MPI refuses root without it
    return cmd + [sys.executable, "-m", "hpc_mm", "launch", str(run_dir)]


def run_local(spec: JobSpec, run_dir: Path | None, mpirun: str = "mpirun") -> int:
    if shutil.which(mpirun) is None:
        raise UserError.one("--mpirun", f"{mpirun!r} is not on PATH",
                            "install Open MPI (apt-get install openmpi-bin) or pass --mpirun /path/to/mpirun")
    planned = layout.plan_run(spec, run_dir)
    refuse_if_active(planned.run_dir)  # e.g. a Slurm job queued on the same run directory
    with lock.acquire(planned.run_dir):
        run_dir = layout.create(planned).run_dir
        cmd = mpirun_command(spec, run_dir, mpirun)
        print(f"run directory: {run_dir}", flush=True)
        print("$ " + " ".join(cmd), flush=True)
        events.record(run_dir, "submitted", mode="local", nnodes=spec.nnodes)
        scratch = tempfile.mkdtemp(prefix="hpc-mm-local-")
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env = dict(os.environ, TMPDIR=scratch, **{lock.INHERITED: str(os.getpid())},
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        try:
            rc, received = _run_mpirun(cmd, env)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _record_end(run_dir, rc, received)
        return rc


def _run_mpirun(cmd: list[str], env: dict) -> tuple[int, int | None]:
    child = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def stop(signum, _frame):
        received.append(signum)
        try:
            if len(received) == 1:  # the exit signal to every rank, through mpirun: they save and end
                child.send_signal(signal.SIGUSR1)
            elif len(received) == 2:  # again: mpirun ends the ranks now
                child.send_signal(signal.SIGTERM)
            else:
                os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, stop) for s in STOPS}
    try:
        while True:
            try:
                return child.wait(), (received[0] if received else None)
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _record_end(run_dir: Path, rc: int, received: int | None) -> None:
    """Every local run ends with a terminal event, whatever the ranks managed to record."""
    last = next((e for e in reversed(events.read(run_dir)) if e.get("event") in events.TERMINAL + ("signal",)), None)
    if received:
        name = signal.Signals(received).name
        events.record(run_dir, "stopped", reason=f"stopped by {name}; continue it with `hpc-mm local JOB "
                      f"--run-dir {run_dir}`", name=name, returncode=rc)
        print(f"hpc-mm local: stopped by {name}; the run can continue from its last checkpoint", flush=True)
    elif last is None or last["event"] not in events.TERMINAL:
        events.record(run_dir, "completed" if rc == 0 else "failed", returncode=rc,
                      reason="" if rc == 0 else f"mpirun ended with exit code {rc}")
