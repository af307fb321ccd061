"""Emulate a multi-node job on one machine with mpirun.

mpirun starts one `hpc-mm launch` per emulated node; each finds itself in the MPI
environment, the ranks agree on rank 0's host and a free port through mpi4py, and each
runs its node's torchrun (or, with launcher srun, one process per rank).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job.spec import JobSpec, nproc_hint
from hpc_mm.run import events, layout


def mpirun_command(spec: JobSpec, run_dir: Path, mpirun: str = "mpirun") -> list[str]:
    if spec.entry.launcher == "torchrun":
        processes = spec.nnodes  # one agent per emulated node; torchrun starts the ranks
    else:
        processes = spec.nnodes * (nproc_hint(spec) or 1)
    cmd = [mpirun, "-np", str(processes), "--oversubscribe", "--bind-to", "none", "-x", "PATH", "-x", "PYTHONPATH"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # Open MPI refuses root without it
    return cmd + [sys.executable, "-m", "hpc_mm", "launch", str(run_dir)]


def run_local(spec: JobSpec, run_dir: Path | None, mpirun: str = "mpirun") -> int:
    if shutil.which(mpirun) is None:
        raise UserError.one("--mpirun", f"{mpirun!r} is not on PATH",
                            "install Open MPI (apt-get install openmpi-bin) or pass --mpirun /path/to/mpirun")
    run_dir = layout.create(layout.plan_run(spec, run_dir)).run_dir
    cmd = mpirun_command(spec, run_dir, mpirun)
    print(f"run directory: {run_dir}", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    events.record(run_dir, "submitted", mode="local", nnodes=spec.nnodes)
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    return subprocess.call(cmd, env=env)
