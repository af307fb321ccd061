"""The interface every place a job can run implements, and the order they are tried in.

An environment reads the variables its launcher set and answers, read-only, what the
scheduler started: how many processes, which one this is, where rank 0 lives. Detection
has no side effects; nothing here writes os.environ or initialises MPI.
"""

from __future__ import annotations

import os
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


def port_for_job(job_id: str) -> int:
    """The same port on every node of a job; consecutive job ids get different ports."""
    digits = "".join(c for c in job_id if c.isdigit())
    number = int(digits) if digits else zlib.crc32(job_id.encode())
    return PORT_BASE + number % PORT_SPAN


class ClusterEnvironment(ABC):
    """What one process started by a launcher knows about itself and its peers."""

    name = "base"

    def __init__(self, env: Mapping[str, str] | None = None, master_port: int | None = None,
                 master_addr: str | None = None):
        self.env = dict(os.environ if env is None else env)
        self._configured_port = master_port  # the job file's distributed.master_port, if an int
        self._configured_addr = master_addr

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

    def job_id(self) -> str | None:
        return None

    def restart_count(self) -> int:
        return 0

    def main_port(self) -> int:
        """An existing MASTER_PORT wins, then the job file's port, then one derived from the job id."""
        if "MASTER_PORT" in self.env:
            return self._int("MASTER_PORT")
        if self._configured_port:
            return self._configured_port
        job = self.job_id()
        return port_for_job(job) if job else 6000  # the seed's default outside any scheduler

    # Helpers: a missing or malformed variable is a user error naming it, never a KeyError.
    def _get(self, *names: str) -> str:
        for name in names:
            value = self.env.get(name)
            if value not in (None, ""):
                return value
        raise UserError.one(" or ".join(names), f"is not set in this {self.name} environment",
                            f"run inside the {self.name} launcher, or set it")

    def _int(self, *names: str) -> int:
        text = self._get(*names)
        try:
            return int(text)
        except ValueError:
            raise UserError.one(names[0], f"{text!r} is not an integer",
                                f"check how {self.name} was started") from None

    def check(self) -> None:
        """Contradictory variables are a user error, found before any process group hangs."""
        ws, rank, lr, lws = self.world_size(), self.global_rank(), self.local_rank(), self.local_world_size()
        if not 0 <= rank < ws:
            raise UserError.one(f"{self.name} rank", f"rank {rank} is outside 0..{ws - 1}", "check the launcher's variables")
        if not 0 <= lr < lws:
            raise UserError.one(f"{self.name} local rank", f"local rank {lr} is outside 0..{lws - 1}",
                                "check the launcher's variables")
        if not 0 <= self.node_rank() < self.num_nodes():
            raise UserError.one(f"{self.name} node rank", f"node rank {self.node_rank()} is outside "
                                f"0..{self.num_nodes() - 1}", "check the launcher's variables")
