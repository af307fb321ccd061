"""Which accelerator this node has: Ascend NPU, CUDA GPU, or none.

torch_npu is optional (Ascend machines only) and imported behind a guard; `detect_device`
looks at variables first so a node with ASCEND_RT_VISIBLE_DEVICES needs no import to know.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Device:
    kind: str  # "npu" | "cuda" | "cpu"
    count: int  # devices visible on this node (1 for cpu)


def _visible(value: str | None) -> int | None:
    if value is None or value.strip() in ("", "NoDevFiles"):
        return None
    return len([v for v in value.split(",") if v.strip() != ""])


def _npu_count() -> int | None:
    if importlib.util.find_spec("torch_npu") is None:
        return None
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        return torch.npu.device_count() if torch.npu.is_available() else None
    except Exception:  # a broken CANN install: treat as no NPU, the job's backend check reports it
        return None


def _cuda_count() -> int | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else None


def detect_device(env: Mapping[str, str] | None = None) -> Device:
    env = os.environ if env is None else env
    npus = _visible(env.get("ASCEND_RT_VISIBLE_DEVICES")) or _npu_count()
    if npus:
        return Device("npu", npus)
    gpus = _cuda_count()
    if gpus:
        return Device("cuda", _visible(env.get("CUDA_VISIBLE_DEVICES")) or gpus)
    return Device("cpu", 1)


def mpi_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_mpi_available()
