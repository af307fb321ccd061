"""Processes started by Slurm: the batch step or tasks of an `srun` step.

This is where SLURM variables become ranks. The step's variables (SLURM_STEP_*) win over
the job's, since an `srun -N 2` inside a 4-node job runs on the step's nodes only.
"""

from __future__ import annotations

import re
from typing import Mapping

import hostlist

from hpc_mm.environments.base import RESTART_VARIABLES, ClusterEnvironment
from hpc_mm.errors import UserError

# A job as Slurm's tools name it: `1234`, or `1234_5` for task 5 of job array 1234.
JOB_ID = re.compile(r"\d+(_\d+)?")


def is_job_id(text: str) -> bool:
    return JOB_ID.fullmatch(text) is not None


def job_id_of(environ: Mapping[str, str]) -> str | None:
    """This process's job as Slurm's tools name it: `<array>_<task>` for a task of a job array
    (a requeue or cancel then reaches that task only), else SLURM_JOB_ID."""
    return SlurmEnvironment(environ).job_id() if environ.get("SLURM_JOB_ID") else None


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's compressed task counts: ``2(x3),1`` -> [2, 2, 2, 1]."""
    try:
        return hostlist.parse_slurm_tasks_per_node(text)
    except (hostlist.BadHostlist, ValueError):
        raise UserError.one(
            "SLURM_TASKS_PER_NODE", f"{text!r} is not a Slurm task-count list", "expected a form like 2(x3),1"
        ) from None


def expand_nodelist(text: str) -> list[str]:
    try:
        return hostlist.expand_hostlist(text)
    except hostlist.BadHostlist as exc:
        raise UserError.one(
            "SLURM_JOB_NODELIST", f"{text!r} is not a hostlist ({exc})", "expected a form like node[001-004]"
        ) from None


class SlurmEnvironment(ClusterEnvironment):
    name = "slurm"

    # One table, so a new Slurm flavour is an edit here. Step variables come first: an
    # `srun -N 2` inside a 4-node job runs on the step's nodes only.
    VARS = {
        "world_size": ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
        "global_rank": ("SLURM_PROCID",),
        "local_rank": ("SLURM_LOCALID",),
        "node_rank": ("SLURM_NODEID",),
        "num_nodes": ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"),
        "nodelist": ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
        "tasks_per_node": ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"),
        "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
        "restart_count": RESTART_VARIABLES,
        "array_job_id": ("SLURM_ARRAY_JOB_ID",),
        "array_task_id": ("SLURM_ARRAY_TASK_ID",),
        "devices_on_node": ("SLURM_GPUS_ON_NODE",),
        "master_addr": ("MASTER_ADDR",),
        "master_port": ("MASTER_PORT",),
        "mpi_rank": ("OMPI_COMM_WORLD_RANK",),
    }

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        # Open MPI's mpirun inside an allocation leaves SLURM_PROCID of its own daemons:
        # then the MPI variables, not Slurm's, describe the process.
        return cls.VARS["job_id"][0] in env and cls.VARS["global_rank"][0] in env and cls.VARS["mpi_rank"][0] not in env

    def world_size(self) -> int:
        if self._has("world_size"):
            return self._int("world_size")
        return sum(self.tasks_per_node())  # the batch step without --ntasks

    def global_rank(self) -> int:
        return self._int("global_rank")

    def local_rank(self) -> int:
        return self._int("local_rank") if self._has("local_rank") else 0

    def node_rank(self) -> int:
        return self._int("node_rank") if self._has("node_rank") else 0

    def num_nodes(self) -> int:
        return self._int("num_nodes")

    def tasks_per_node(self) -> list[int]:
        return expand_tasks_per_node(self._get("tasks_per_node"))

    def local_world_size(self) -> int:
        counts = self.tasks_per_node()
        if self.node_rank() >= len(counts):
            raise UserError.one(
                "SLURM_TASKS_PER_NODE",
                f"has {len(counts)} nodes but SLURM_NODEID is {self.node_rank()}",
                "the variables disagree; were they copied from another job?",
            )
        return counts[self.node_rank()]

    def hosts(self) -> list[str]:
        return expand_nodelist(self._get("nodelist"))

    def main_address(self) -> str:
        # Tasks are placed block-wise from the step's first node, so rank 0 runs there.
        return self._first("master_addr") or self._configured_addr or self.hosts()[0]

    def job_id(self) -> str | None:
        """`<array>_<task>` for a task of a job array (how Slurm's tools name it), else the id."""
        array = self.array()
        return f"{array[0]}_{array[1]}" if array and array[1] else self._first("job_id")

    def array(self) -> tuple[str, str] | None:
        if self._has("array_job_id"):
            return self._get("array_job_id"), self._first("array_task_id") or ""
        return None

    def devices_on_node(self) -> int | None:
        value = self._first("devices_on_node")
        return int(value) if value and value.isdigit() else None

    def check(self) -> None:
        hosts, counts, nodes = self.hosts(), self.tasks_per_node(), self.num_nodes()
        if len(hosts) != nodes:
            raise UserError.one(
                "SLURM_STEP_NODELIST",
                f"lists {len(hosts)} hosts but the step has {nodes} nodes",
                "the variables disagree; were they copied from another job?",
            )
        if len(counts) != nodes or sum(counts) != self.world_size():
            raise UserError.one(
                "SLURM_TASKS_PER_NODE",
                f"{counts} does not add up to {self.world_size()} tasks on {nodes} nodes",
                "the variables disagree; were they copied from another job?",
            )
        super().check()
