"""The interface every place a job can run implements, and the order they are tried in.

An environment reads the variables its launcher set and answers, read-only, what the
scheduler started: how many processes, which one this is, where rank 0 lives. Detection
has no side effects; nothing here writes os.environ or initialises MPI.
"""

from __future__ import annotations

import os
import socket
import zlib
from abc import ABC, abstractmethod
from typing import Mapping

from hpc_mm.errors import UserError

# Ports derived from a job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN): above the
# well-known and registered ports people use by hand (6000, 8080, ...) and below the
# kernel's ephemeral range (32768-60999), so a derived port never collides with a
# client socket's source port.
PORT_BASE = 15000
PORT_SPAN = 15000
# Which start of a run this is: hpc-mm's own count first (a chained job is a new Slurm job, whose
# SLURM_RESTART_COUNT starts at 0 again), then Slurm's.
RESTART_VARIABLES = ("HPC_MM_RESTART", "SLURM_RESTART_COUNT")


def restart_from(env: Mapping[str, str]) -> int:
    value = next((env[v] for v in RESTART_VARIABLES if env.get(v, "").isdigit()), "0")
    return int(value)


def free_port() -> int:
    """A port no one listens on now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_for_job(job_id: str, restart: int = 0) -> int:
    """The same port on every node of a start; consecutive job ids, and the starts one job makes
    inside its allocation (whose previous step may still hold its port), get different ones."""
    digits = "".join(c for c in job_id if c.isdigit())
    number = int(digits) if digits else zlib.crc32(job_id.encode())
    return PORT_BASE + (number + 997 * restart) % PORT_SPAN


class ClusterEnvironment(ABC):
    """What one process started by a launcher knows about itself and its peers.

    Each subclass reads its launcher's variables through its `VARS` table (answer -> the
    variables that hold it, first set one wins), so a new flavour is a table edit. The job
    file's topology (`nnodes`, `node_rank`, master address and port) fills gaps only.
    """

    name = "base"
    VARS: dict[str, tuple[str, ...]] = {"master_addr": ("MASTER_ADDR",), "master_port": ("MASTER_PORT",)}

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        master_port: int | None = None,
        master_addr: str | None = None,
        nnodes: int = 1,
        node_rank: int = 0,
    ):
        self.env = dict(os.environ if env is None else env)
        self._configured_port = master_port  # the job file's distributed.master_port, if an int
        self._configured_addr = master_addr
        self._configured_nnodes = nnodes
        self._configured_node_rank = node_rank

    @staticmethod
    @abstractmethod
    def detect(env: Mapping[str, str]) -> bool:
        """True when this launcher started the process (reads `env` only)."""

    @abstractmethod
    def world_size(self) -> int:
        """Processes the launcher started, all nodes together."""

    @abstractmethod
    def global_rank(self) -> int:
        """This process's index among them."""

    @abstractmethod
    def local_rank(self) -> int:
        """This process's index on its node."""

    @abstractmethod
    def local_world_size(self) -> int:
        """Processes on this node."""

    @abstractmethod
    def node_rank(self) -> int:
        """This node's index."""

    @abstractmethod
    def num_nodes(self) -> int:
        """Nodes taking part."""

    @abstractmethod
    def hosts(self) -> list[str]:
        """Host names of the nodes, in node-rank order."""

    @abstractmethod
    def main_address(self) -> str:
        """Where rank 0 runs: the address every process connects to."""

    def prepare(self) -> None:
        """Agree with the peers on what no variable says (MPI: the master); a no-op elsewhere.

        The launcher calls it once, before asking for the master; detection never does."""

    def devices_on_node(self) -> int | None:
        """Accelerators the scheduler gave this node, when it says; None where unknown."""
        return None

    def job_id(self) -> str | None:
        return self._first("job_id")

    def restart_count(self) -> int:
        return self._int("restart_count") if self._has("restart_count") else restart_from(self.env)

    def main_port(self) -> int:
        """An existing MASTER_PORT wins, then the job file's port, then one derived from the job id."""
        if self._has("master_port"):
            return self._int("master_port")
        if self._configured_port:
            return self._configured_port
        job = self.job_id()
        return port_for_job(job, self.restart_count()) if job else 6000  # the seed's default outside a scheduler

    # Reading the table: a missing or malformed variable is a user error naming it, never a KeyError.
    def _first(self, key: str) -> str | None:
        """The first set variable of `VARS[key]`, or None (also for keys the table lacks)."""
        for name in self.VARS.get(key, ()):
            value = self.env.get(name)
            if value not in (None, ""):
                return value
        return None

    def _has(self, key: str) -> bool:
        return self._first(key) is not None

    def _get(self, key: str) -> str:
        value = self._first(key)
        if value is None:
            names = " or ".join(self.VARS.get(key, (key,)))
            raise UserError.one(
                names, f"is not set in this {self.name} environment", f"run inside the {self.name} launcher, or set it"
            )
        return value

    def _int(self, key: str) -> int:
        text = self._get(key)
        try:
            return int(text)
        except ValueError:
            raise UserError.one(
                self.VARS[key][0], f"{text!r} is not an integer", f"check how {self.name} was started"
            ) from None

    def check(self) -> None:
        """Contradictory variables are a user error, found before any process group hangs."""
        ws, rank, lr, lws = self.world_size(), self.global_rank(), self.local_rank(), self.local_world_size()
        if not 0 <= rank < ws:
            raise UserError.one(
                f"{self.name} rank", f"rank {rank} is outside 0..{ws - 1}", "check the launcher's variables"
            )
        if not 0 <= lr < lws:
            raise UserError.one(
                f"{self.name} local rank", f"local rank {lr} is outside 0..{lws - 1}", "check the launcher's variables"
            )
        if not 0 <= self.node_rank() < self.num_nodes():
            raise UserError.one(
                f"{self.name} node rank",
                f"node rank {self.node_rank()} is outside 0..{self.num_nodes() - 1}",
                "check the launcher's variables",
            )
