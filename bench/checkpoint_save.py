"""How long a checkpoint save stalls training: synchronous vs asynchronous save, by size.

The stall is the time the training thread spends in the save call; for async saves the
write continues in a background thread (its total time is measured too).
Prints a Markdown table.
"""

import statistics
import sys
import tempfile
import time

import torch

from hpc_mm.train import checkpoint

SIZES_MB = [16, 128, 512]
REPEATS = 3


def state_of(mb: int) -> dict:
    return {"model": {"w": torch.randn(mb * 1024 * 1024 // 4)}, "iteration": 0}


def measure(mb: int):
    sync, stall, total = [], [], []
    with tempfile.TemporaryDirectory() as d:
        state = state_of(mb)
        for i in range(REPEATS):
            t = time.perf_counter()
            checkpoint.save(f"{d}/sync", i + 1, state, keep_last=1)
            sync.append(time.perf_counter() - t)
        saver = checkpoint.AsyncSaver()
        for i in range(REPEATS):
            t = time.perf_counter()
            saver.save(f"{d}/async", i + 1, state, keep_last=1)
            stall.append(time.perf_counter() - t)
            saver.wait()
            total.append(time.perf_counter() - t)
    return statistics.median(sync), statistics.median(stall), statistics.median(total)


def main():
    print("| state size | sync save (training stalls) | async: training stalls | async: write finishes after |")
    print("|---:|---:|---:|---:|")
    for mb in SIZES_MB:
        s, a, t = measure(mb)
        print(f"| {mb} MB | {s:.3f} s | {a:.3f} s | {t:.3f} s |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
