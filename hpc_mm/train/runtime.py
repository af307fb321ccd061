"""The built-in trainer's runtime pieces: its device, the exit signal every rank agrees on,
data-loader workers that leave stopping to the main process, Megatron-style gradient
all-reduce, and the RNG state a checkpoint carries for an exact resume.
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import torch
import torch.distributed as dist

from hpc_mm.environments.devices import detect_device
from hpc_mm.errors import UserError


class ExitSignal:
    """Remembers that SIGTERM arrived; the loop checks it once per iteration, on all ranks."""

    def __init__(self, enabled: bool):
        self.received: int | None = None
        if enabled:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, _frame):
        self.received = signum

    def agreed(self) -> bool:
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def bind_device(backend: str) -> tuple[torch.device, str]:
    """The device this rank trains on (from the shared device detection) and the backend that runs."""
    if backend not in ("nccl", "hccl"):
        return torch.device("cpu"), backend
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = detect_device()
    if device.kind == "npu":
        import torch_npu  # noqa: F401  (Ascend: registers torch.npu)

        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank), "hccl"  # what MindSpeed does with "nccl"
    if device.kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    raise UserError.one(
        "--distributed-backend",
        f"{backend} needs an NPU or a GPU and this node has neither",
        "use gloo on CPU (backend: auto in the job file)",
    )


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave stopping to the main process, which saves first.

    torchrun signals each worker's whole process group; a loader worker killed by SIGTERM
    would abort the iteration the exit-signal handler is waiting to finish.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def allreduce_gradients(params: list[torch.Tensor], group, dp_size: int) -> None:
    """Average gradients over the DP group through one flat buffer in a fixed order."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    flat.div_(dp_size)
    for p, synced in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = synced


def rng_state() -> dict:
    state = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    if "cuda_rng_state" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
