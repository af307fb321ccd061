"""Which accelerators this node has, found without importing torch: Ascend NPUs, CUDA GPUs, or none.

The job declares its device (`distributed.device`, or `auto`: from `slurm.gres` /
`slurm.gpus_per_node`); on the node, `check_device` makes sure it is really there and counts
it, from what the node shows and what Slurm says, by this table:

    device  is there when                                   count (for nproc_per_node: auto)
    npu     /dev/davinci_manager and /dev/davinciN exist    ASCEND_RT_VISIBLE_DEVICES, else the davinciN
    cuda    /dev/nvidiaN exist, or Slurm gave GPUs          CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE,
            (SLURM_GPUS_ON_NODE, SLURM_JOB_GRES gpu:N)      else SLURM_JOB_GRES, else the nvidiaN
    cpu     always                                          1
    auto    npu if its devices exist, else cuda, else cpu

A mismatch (a job for NPUs on a node without them) is one error naming the node. Tests point
HPC_MM_DEVICE_ROOT at a folder holding a fake dev/ to play any node (`{node}` in it stands for
the node's name, so that nodes sharing one machine can differ).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hpc_mm.errors import UserError

ROOT_VARIABLE = "HPC_MM_DEVICE_ROOT"
_NUMBERED = re.compile(r"^(davinci|nvidia)(\d+)$")
# What each device needs in the entry's interpreter, as Python modules.
MODULES = {"npu": ("torch", "torch_npu"), "cuda": ("torch",), "cpu": ("torch",)}


@dataclass(frozen=True)
class Device:
    kind: str  # "npu" | "cuda" | "cpu"
    count: int  # devices this node gives the job (1 for cpu)
    evidence: str = ""  # what said so, for messages


def node_name(env: Mapping[str, str]) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def _dev(env: Mapping[str, str]) -> Path:
    """The node's /dev; a test points HPC_MM_DEVICE_ROOT elsewhere (`{node}` in it: one per node)."""
    return Path(env.get(ROOT_VARIABLE, "/").replace("{node}", node_name(env))) / "dev"


def numbered(env: Mapping[str, str], prefix: str) -> list[int]:
    try:
        names = os.listdir(_dev(env))
    except OSError:
        return []
    return sorted(int(m.group(2)) for n in names if (m := _NUMBERED.match(n)) and m.group(1) == prefix)


def _listed(value: str | None) -> list[str] | None:
    """A *_VISIBLE_DEVICES list; None when unset or empty (Slurm's "NoDevFiles" too)."""
    if value is None or value.strip() in ("", "NoDevFiles"):
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _slurm_gpus(env: Mapping[str, str]) -> int | None:
    value = env.get("SLURM_GPUS_ON_NODE", "")
    if value.isdigit():
        return int(value)
    match = re.search(r"(?:^|,|/)gpu(?::[^:,]+)?:(\d+)", env.get("SLURM_JOB_GRES", ""))
    return int(match.group(1)) if match else None


def npus(env: Mapping[str, str]) -> Device | None:
    found = numbered(env, "davinci")
    if not found or not (_dev(env) / "davinci_manager").exists():
        return None
    visible = _listed(env.get("ASCEND_RT_VISIBLE_DEVICES"))
    if visible is not None:
        missing = [v for v in visible if not v.isdigit() or int(v) not in found]
        if missing:
            raise UserError.one(
                "ASCEND_RT_VISIBLE_DEVICES",
                f"lists {','.join(missing)}, which {node_name(env)} "
                f"does not have (it has davinci{','.join(map(str, found))})",
                "unset it, or list devices of this node",
            )
        return Device("npu", len(visible), "ASCEND_RT_VISIBLE_DEVICES")
    return Device("npu", len(found), f"/dev/davinci{found[0]}..{found[-1]}")


def gpus(env: Mapping[str, str]) -> Device | None:
    visible = _listed(env.get("CUDA_VISIBLE_DEVICES"))
    slurm = _slurm_gpus(env)
    found = numbered(env, "nvidia")
    if visible is not None and (found or slurm):
        return Device("cuda", len(visible), "CUDA_VISIBLE_DEVICES")
    if slurm:
        return Device("cuda", slurm, "SLURM_GPUS_ON_NODE / SLURM_JOB_GRES")
    if found:
        return Device("cuda", len(found), f"/dev/nvidia{found[0]}..{found[-1]}")
    return None


def detect_device(env: Mapping[str, str] | None = None) -> Device:
    """What this node has: NPUs, else GPUs, else the CPU."""
    env = os.environ if env is None else env
    return npus(env) or gpus(env) or Device("cpu", 1, "no accelerator found")


def check_device(declared: str | None, env: Mapping[str, str] | None = None) -> Device:
    """The device the job declared, checked on this node (None or "auto": what the node has)."""
    env = os.environ if env is None else env
    if declared in (None, "auto"):
        return detect_device(env)
    if declared == "cpu":
        return Device("cpu", 1, "declared")
    found = npus(env) if declared == "npu" else gpus(env)
    if found is None:
        what = (
            "no /dev/davinci* devices (or no /dev/davinci_manager)"
            if declared == "npu"
            else "no /dev/nvidia* devices and no GPUs from Slurm"
        )
        raise UserError.one(
            "distributed.device",
            f"the job runs on {declared} but node {node_name(env)} has {what}",
            "ask Slurm for the right nodes (slurm.gres, slurm.partition), or set distributed.device",
        )
    return found


def mpi_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_mpi_available()
