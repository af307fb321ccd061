"""Processes started by torchrun (torch.distributed.run / torchelastic).

Tried first: torchrun can itself run inside Slurm or mpirun, and then its variables,
not the scheduler's, describe the process.
"""

from __future__ import annotations

from typing import Mapping

from hpc_mm.environments.base import ClusterEnvironment


class TorchrunEnvironment(ClusterEnvironment):
    name = "torchrun"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK"))

    def world_size(self) -> int:
        return self._int("WORLD_SIZE")

    def global_rank(self) -> int:
        return self._int("RANK")

    def local_rank(self) -> int:
        return self._int("LOCAL_RANK")

    def local_world_size(self) -> int:
        return self._int("LOCAL_WORLD_SIZE")

    def node_rank(self) -> int:
        return self._int("GROUP_RANK")

    def num_nodes(self) -> int:
        if "GROUP_WORLD_SIZE" in self.env:
            return self._int("GROUP_WORLD_SIZE")
        return self.world_size() // self.local_world_size()

    def hosts(self) -> list[str]:
        return [self.main_address()]

    def main_address(self) -> str:
        return self._get("MASTER_ADDR")

    def main_port(self) -> int:
        return self._int("MASTER_PORT")

    def job_id(self) -> str | None:
        return self.env.get("SLURM_JOB_ID") or self.env.get("TORCHELASTIC_RUN_ID")

    def restart_count(self) -> int:
        return int(self.env.get("SLURM_RESTART_COUNT") or self.env.get("TORCHELASTIC_RESTART_COUNT") or 0)
