"""No launcher at all: one process on this node, topology from the job file.

This is how MindSpeed-MM's own scripts run: the user sets NNODES/NODE_RANK/MASTER_ADDR
per node by hand (here: distributed.* in the job file, or the usual variables).
"""

from __future__ import annotations

from typing import Mapping

from hpc_mm.environments.base import ClusterEnvironment, free_port


class LocalEnvironment(ClusterEnvironment):
    name = "local"
    _port: int | None = None
    VARS = {
        "num_nodes": ("NNODES",),
        "node_rank": ("NODE_RANK",),
        "master_addr": ("MASTER_ADDR",),
        "master_port": ("MASTER_PORT",),
    }

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return True

    def world_size(self) -> int:
        return self.num_nodes()

    def global_rank(self) -> int:
        return self.node_rank()

    def local_rank(self) -> int:
        return 0

    def local_world_size(self) -> int:
        return 1

    def node_rank(self) -> int:
        return self._int("node_rank") if self._has("node_rank") else self._configured_node_rank

    def num_nodes(self) -> int:
        return self._int("num_nodes") if self._has("num_nodes") else self._configured_nnodes

    def hosts(self) -> list[str]:
        return [self.main_address()]

    def main_address(self) -> str:
        return self._first("master_addr") or self._configured_addr or "localhost"

    def main_port(self) -> int:
        """MASTER_PORT or the job file's port; else, alone on this node, a free port (a fixed
        one would collide with the next run started by hand), and for several nodes started
        by hand the seed's 6000, which they all know."""
        if self._has("master_port") or self._configured_port or self.num_nodes() > 1:
            return super().main_port()
        if self._port is None:
            self._port = free_port()
        return self._port
