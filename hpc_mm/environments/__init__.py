"""Where a process runs, and what that tells it: ranks, nodes, master address and port."""

from __future__ import annotations

import os
from typing import Mapping

from hpc_mm.environments.base import ClusterEnvironment, port_for_job
from hpc_mm.environments.local import LocalEnvironment
from hpc_mm.environments.mpi import MPIEnvironment
from hpc_mm.environments.slurm import SlurmEnvironment
from hpc_mm.environments.torchrun import TorchrunEnvironment

# Tried in this order, first match wins:
#   torchrun first: it can run inside Slurm or mpirun, and its variables describe the worker;
#   Slurm next: srun sets PMI/PMIx variables too, but Slurm's are complete;
#   MPI: mpirun with no scheduler (or Open MPI's mpirun inside an allocation);
#   local last: always matches, topology from the job file.
PRIORITY: tuple[type[ClusterEnvironment], ...] = (
    TorchrunEnvironment,
    SlurmEnvironment,
    MPIEnvironment,
    LocalEnvironment,
)


def select_environment(
    env: Mapping[str, str] | None = None,
    master_port: int | None = None,
    master_addr: str | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
) -> ClusterEnvironment:
    """The first environment in PRIORITY that detects itself; the job file's values fill gaps."""
    env = dict(os.environ if env is None else env)
    for cls in PRIORITY:
        if cls.detect(env):
            return cls(env, master_port, master_addr, nnodes=nnodes, node_rank=node_rank)
    raise AssertionError("LocalEnvironment always matches")


__all__ = [
    "ClusterEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SlurmEnvironment",
    "TorchrunEnvironment",
    "PRIORITY",
    "port_for_job",
    "select_environment",
]
