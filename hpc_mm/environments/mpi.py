"""Processes started by an MPI launcher (Open MPI, MPICH / Intel MPI, PMIx) without a scheduler.

Ranks come from the launcher's variables (a table per flavour). The master address and
port are not in any variable: `prepare()` asks mpi4py to broadcast rank 0's host and a free
port. Only `prepare()` initialises MPI; detection and the other answers never do.
"""

from __future__ import annotations

import socket
from typing import Mapping

from hpc_mm.environments.base import ClusterEnvironment, free_port
from hpc_mm.errors import UserError

FLAVOURS = {
    "openmpi": {
        "rank": "OMPI_COMM_WORLD_RANK",
        "size": "OMPI_COMM_WORLD_SIZE",
        "local_rank": "OMPI_COMM_WORLD_LOCAL_RANK",
        "local_size": "OMPI_COMM_WORLD_LOCAL_SIZE",
    },
    "mpich": {"rank": "PMI_RANK", "size": "PMI_SIZE", "local_rank": "MPI_LOCALRANKID", "local_size": "MPI_LOCALNRANKS"},
    "pmix": {"rank": "PMIX_RANK"},  # PMIx exports no size: prepare() asks MPI
}


class MPIEnvironment(ClusterEnvironment):
    name = "mpi"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        master_port: int | None = None,
        master_addr: str | None = None,
        nnodes: int = 1,
        node_rank: int = 0,
    ):
        super().__init__(env, master_port, master_addr, nnodes, node_rank)
        self.flavour = next(f for f, names in FLAVOURS.items() if names["rank"] in self.env)
        self.VARS = {
            **{key: (name,) for key, name in FLAVOURS[self.flavour].items()},
            "master_addr": ("MASTER_ADDR",),
            "master_port": ("MASTER_PORT",),
            "job_id": ("OMPI_MCA_orte_jobfam", "PMIX_NAMESPACE"),
        }
        self._agreed: dict | None = None

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return any(names["rank"] in env for names in FLAVOURS.values())

    def _var(self, key: str) -> int:
        if not self._has(key):
            if self._agreed and key in self._agreed:
                return self._agreed[key]
            raise UserError.one(
                f"{self.flavour} {key}",
                "is not in the environment",
                "start with Open MPI's or MPICH's mpirun, which export it",
            )
        return self._int(key)

    def world_size(self) -> int:
        return self._var("size")

    def global_rank(self) -> int:
        return self._var("rank")

    def local_rank(self) -> int:
        return self._var("local_rank")

    def local_world_size(self) -> int:
        return self._var("local_size")

    def num_nodes(self) -> int:
        return max(1, self.world_size() // self.local_world_size())

    def node_rank(self) -> int:
        # mpirun maps by slot: ranks fill one node before the next.
        return self.global_rank() // self.local_world_size()

    def hosts(self) -> list[str]:
        return list(self._agreed["hosts"]) if self._agreed else [self.main_address()]

    def main_address(self) -> str:
        address = self._first("master_addr") or self._configured_addr or (self._agreed or {}).get("addr")
        if address:
            return address
        raise UserError.one(
            "MASTER_ADDR",
            "is unknown under mpirun until the ranks agree on it",
            "this is a bug if you see it from hpc-mm launch: prepare() agrees on it",
        )

    def main_port(self) -> int:
        if self._has("master_port") or self._configured_port:
            return super().main_port()
        if self._agreed:
            return self._agreed["port"]
        raise UserError.one("MASTER_PORT", "is unknown under mpirun until the ranks agree on it")

    def prepare(self) -> None:
        """Broadcast rank 0's host name and a free port on it to every rank (uses mpi4py)."""
        try:
            from mpi4py import MPI
        except ImportError:
            raise UserError.one(
                "mpi4py",
                "is not installed, and the ranks must agree on a master address",
                "pip install 'hpc-mm[mpi]', or set MASTER_ADDR and MASTER_PORT",
            ) from None
        comm = MPI.COMM_WORLD
        host = socket.gethostname()
        offer = {"addr": host, "port": free_port()} if comm.Get_rank() == 0 else None
        agreed = comm.bcast(offer, root=0)
        hosts = comm.allgather(host)
        ranks_here = [r for r, h in enumerate(hosts) if h == host]
        self._agreed = {
            **agreed,
            "hosts": list(dict.fromkeys(hosts)),
            "rank": comm.Get_rank(),
            "size": comm.Get_size(),
            "local_rank": ranks_here.index(comm.Get_rank()),
            "local_size": len(ranks_here),
        }
