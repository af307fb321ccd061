"""Processes started by torchrun (torch.distributed.run / torchelastic).

Tried first: torchrun can itself run inside Slurm or mpirun, and then its variables,
not the scheduler's, describe the process.
"""

from __future__ import annotations

from typing import Mapping

from hpc_mm.environments.base import RESTART_VARIABLES, ClusterEnvironment


class TorchrunEnvironment(ClusterEnvironment):
    name = "torchrun"
    VARS = {
        "world_size": ("WORLD_SIZE",),
        "global_rank": ("RANK",),
        "local_rank": ("LOCAL_RANK",),
        "local_world_size": ("LOCAL_WORLD_SIZE",),
        "node_rank": ("GROUP_RANK",),
        "num_nodes": ("GROUP_WORLD_SIZE",),
        "master_addr": ("MASTER_ADDR",),
        "master_port": ("MASTER_PORT",),
        "job_id": ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"),
        "restart_count": (*RESTART_VARIABLES, "TORCHELASTIC_RESTART_COUNT"),
    }
    _DETECT = ("world_size", "global_rank", "local_rank", "node_rank")

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return all(cls.VARS[key][0] in env for key in cls._DETECT)

    def world_size(self) -> int:
        return self._int("world_size")

    def global_rank(self) -> int:
        return self._int("global_rank")

    def local_rank(self) -> int:
        return self._int("local_rank")

    def local_world_size(self) -> int:
        return self._int("local_world_size")

    def node_rank(self) -> int:
        return self._int("node_rank")

    def num_nodes(self) -> int:
        if self._has("num_nodes"):
            return self._int("num_nodes")
        return self.world_size() // self.local_world_size()

    def hosts(self) -> list[str]:
        return [self.main_address()]

    def main_address(self) -> str:
        return self._get("master_addr")

    def main_port(self) -> int:
        return self._int("master_port")
