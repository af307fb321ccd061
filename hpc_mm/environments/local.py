"""No launcher at all: one process on this node, topology from the job file.

This is how MindSpeed-MM's own scripts run: the user sets NNODES/NODE_RANK/MASTER_ADDR
per node by hand (here: distributed.* in the job file, or the usual variables).
"""

from __future__ import annotations

from typing import Mapping

from hpc_mm.environments.base import ClusterEnvironment


class LocalEnvironment(ClusterEnvironment):
    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None, master_port: int | None = None,
                 master_addr: str | None = None, nnodes: int = 1, node_rank: int = 0):
        super().__init__(env, master_port, master_addr)
        self._nnodes = int(self.env.get("NNODES") or nnodes)
        self._node_rank = int(self.env.get("NODE_RANK") or node_rank)

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return True

    def world_size(self) -> int:
        return self._nnodes

    def global_rank(self) -> int:
        return self._node_rank

    def local_rank(self) -> int:
        return 0

    def local_world_size(self) -> int:
        return 1

    def node_rank(self) -> int:
        return self._node_rank

    def num_nodes(self) -> int:
        return self._nnodes

    def hosts(self) -> list[str]:
        return [self.main_address()]

    def main_address(self) -> str:
        return self.env.get("MASTER_ADDR") or self._configured_addr or "localhost"
