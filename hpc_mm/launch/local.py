"""Emulate a multi-node job on one machine with mpirun.

mpirun starts one `hpc-mm launch` per emulated node; each finds itself in the MPI
environment, the ranks agree on rank 0's host and a free port through mpi4py, and each
runs its node's torchrun (or, with launcher srun, one process per rank). Each writes its own
log, as a Slurm task does (`hpc-mm logs RUN_DIR --rank N` works on local runs); the terminal
shows one line of progress and, at the end, the run's summary.

Stopping works as on Slurm: Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP to `hpc-mm local` reach every
rank as the exit signal (through mpirun, which forwards SIGUSR1), the job saves a checkpoint
and ends, and the run records `stopped`; a second signal stops mpirun at once. `--preempt-at N`
emulates a preemption: at iteration N the same signal goes the same way, the job saves, and it
starts again as a requeued job would, one restart further, from its checkpoint. mpirun runs in
a session of its own (a terminal's Ctrl-C reaches only us), and it and torchrun keep their
temporary files in a folder that is removed when the run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mm.environments.base import restart_from
from hpc_mm.errors import UserError
from hpc_mm.job.entries import contract
from hpc_mm.job.spec import JobSpec, nproc_hint
from hpc_mm.launch.post import run_post
from hpc_mm.launch.requeue import training_finished
from hpc_mm.run import layout, lock, notify
from hpc_mm.run.events import LOCAL_JOB_VARIABLE, Kind, StartKey
from hpc_mm.run.follow import Follower
from hpc_mm.run.layout import TASK_LOG
from hpc_mm.run.report import summary, summary_text
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm.submit import check_resume, refuse_if_active

# Marks the launches `hpc-mm local` starts: it records how each start ends (launch/supervise.py).
LOCAL_MARK = "HPC_MM_LOCAL"

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def mpirun_command(spec: JobSpec, run_dir: Path, mpirun: str = "mpirun") -> list[str]:
    if spec.entry.agent:
        processes = spec.nnodes  # one agent per emulated node (torchrun, msrun) starts the ranks
    else:
        processes = spec.nnodes * (nproc_hint(spec) or 1)
    cmd = [mpirun, "-np", str(processes), "--oversubscribe", "--bind-to", "none"]
    for name in (
        "PATH",
        "PYTHONPATH",
        "TMPDIR",
        lock.INHERITED,
        "HPC_MM_RESTART",
        TASK_LOG,
        LOCAL_JOB_VARIABLE,
        LOCAL_MARK,
    ):
        cmd += ["-x", name]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # Open MPI refuses root without it
    return cmd + [sys.executable, "-m", "hpc_mm", "launch", str(run_dir)]


def run_local(
    spec: JobSpec, run_dir: Path | None, mpirun: str = "mpirun", preempt_at: list[int] = (), new_code: bool = False
) -> int:
    if shutil.which(mpirun) is None:
        raise UserError.one(
            "--mpirun",
            f"{mpirun!r} is not on PATH",
            "install Open MPI (apt-get install openmpi-bin) or pass --mpirun /path/to/mpirun",
        )
    planned = layout.plan_run(spec, run_dir, new_code)
    refuse_if_active(planned.run_dir)  # e.g. a Slurm job queued on the same run directory
    check_resume(spec, planned.run_dir)
    with lock.acquire(planned.run_dir):
        run_dir = layout.create(planned).run_dir
        run = RunDir(run_dir)
        job_id = f"local_{int(time.time())}"  # every start has a job: this invocation of hpc-mm local
        print(f"run directory: {run_dir}\nlogs: hpc-mm logs {run_dir} [--rank N]", flush=True)
        restart, pending = restart_from(os.environ), sorted(set(preempt_at))
        run.record(Kind.SUBMITTED, StartKey(job_id, restart), mode="local", nnodes=spec.nnodes)
        follower = Follower(run_dir, contract(spec).train_iters(spec))
        while True:
            pending = [p for p in pending if p > follower.iteration()]
            key = StartKey(job_id, restart)
            rc, received, preempted = _start(spec, run_dir, mpirun, key, pending[0] if pending else None, follower)
            if not preempted or received:
                break
            requeued = run.record(
                Kind.REQUEUED,
                key,
                cause="preemption",
                emulated=True,
                reason=f"emulated preemption at iteration {pending[0]} (--preempt-at)",
                iteration=run.reread().latest_checkpoint(spec),
                **_lost(run, key),
            )
            notify.deliver(run, [requeued], spec)
            restart += 1
        follower.close()
        before = len(run.reread().events())
        step_rc = rc
        rc = _record_end(spec, run, rc, received, StartKey(job_id, restart))
        notify.deliver(run, run.reread().events()[before:], spec)
        run_post(spec, step_rc, rc)  # the job's post lines, as the batch script runs them
        try:
            print(summary_text(summary(run)), flush=True)
        except UserError:
            pass  # nothing trained: the logs say why
        if received:
            return 128 + received  # stopped by a signal (Ctrl-C: 130), as a shell reports it
        if rc != 0:
            print(f"hpc-mm local: ended with exit code {rc}; see hpc-mm logs {run_dir}", file=sys.stderr, flush=True)
        return rc


def _start(
    spec: JobSpec, run_dir: Path, mpirun: str, key: StartKey, preempt_at: int | None, follower: Follower
) -> tuple[int, int | None, bool]:
    """One start of the emulated job; returns (exit code, the user's stop signal, preempted)."""
    scratch = tempfile.mkdtemp(prefix="hpc-mm-local-")
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    log = RunDir(run_dir).local_task_log(spec.name, key)
    env = dict(
        os.environ,
        TMPDIR=scratch,
        HPC_MM_RESTART=str(key.restart),
        **{lock.INHERITED: str(os.getpid()), TASK_LOG: str(log), LOCAL_JOB_VARIABLE: key.job_id, LOCAL_MARK: "1"},
        PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    )
    received: list[int] = []
    preempted = False
    with open(RunDir(run_dir).mpirun_log(spec.name), "a") as mpi_log:
        child = subprocess.Popen(
            mpirun_command(spec, run_dir, mpirun),
            env=env,
            start_new_session=True,
            stdout=mpi_log,
            stderr=subprocess.STDOUT,
        )

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
            while child.poll() is None:
                follower.update("preempting" if preempted else "stopping" if received else "running")
                if preempt_at is not None and not (preempted or received) and follower.iteration() >= preempt_at:
                    child.send_signal(signal.SIGUSR1)  # what Slurm's preemption signal becomes on its way
                    preempted = True
                time.sleep(0.05 if preempt_at is not None and not preempted else 0.3)
            follower.update()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(scratch, ignore_errors=True)
    return child.returncode, (received[0] if received else None), preempted


def _record_end(spec: JobSpec, run: RunDir, rc: int, received: int | None, key: StartKey) -> int:
    """Every local run ends with a terminal event, whatever the ranks managed to record; the exit code
    of the run (0 once training finished, as finish rules under Slurm: a teardown error after the
    last checkpoint is no failure)."""
    run = run.reread()
    this = run.start(key)
    done = training_finished(spec, run) if rc != 0 and not received else None
    if done is not None and this.end is None:
        run.record(
            Kind.COMPLETED,
            key,
            returncode=rc,
            reason=f"training finished (checkpoint at iteration {done}); the processes ended with {rc} after it",
        )
        print(f"hpc-mm local: training finished; the processes' exit code {rc} came after it", flush=True)
        return 0
    if received:
        name = signal.Signals(received).name
        run.record(
            Kind.STOPPED,
            key,
            name=name,
            returncode=rc,
            **_lost(run, key),
            reason=f"stopped by {name}; continue it with `hpc-mm local JOB --run-dir {run.path}`",
        )
        print(f"hpc-mm local: stopped by {name}; the run can continue from its last checkpoint", flush=True)
    elif this.end is None:
        exited = this.last(Kind.EXITED)
        error = exited.get("error") if exited else None
        run.record(
            Kind.COMPLETED if rc == 0 else Kind.FAILED,
            key,
            returncode=rc,
            **({} if rc == 0 else _lost(run, key)),
            reason="" if rc == 0 else error or f"mpirun ended with exit code {rc}",
        )
    return rc


def _lost(run: RunDir, key: StartKey) -> dict:
    """The iterations this start trained past its last checkpoint, as its leader recorded them."""
    exited = run.reread().start(key).last(Kind.EXITED)
    lost = exited.get("lost_iterations") if exited else None
    return {"lost_iterations": lost} if lost is not None else {}
