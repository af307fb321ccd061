"""Checkpoints: write throughput against the disk's own limit, how long training is blocked by
a synchronous and an asynchronous save, and load time.

The state is SIZE_MB of float32 tensors (a model and its two Adam moments, as the built-in
trainer saves them). The physical limit is `dd oflag=direct` of the same number of bytes into
the same folder (no page cache); `dd conv=fsync` (through the page cache, then fsync, which is
what an atomic save does) is shown too. A save is hpc-mm's whole atomic save: temporary folder,
torch.save through the writer (CRC-32 on the way, O_DIRECT), fsync, manifest, rename, tracker;
deleting the checkpoint before it (keep_last) is shown on its own. Median (min-max) of REPEATS.
Prints Markdown.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, spread, table, verdict  # noqa: E402

from hpc_mm.train import checkpoint  # noqa: E402

SIZE_MB = 1024
REPEATS = 3


def state_of(mb: int) -> dict:
    third = mb * 1024 * 1024 // 4 // 3
    return {
        "model": {"w": torch.randn(third)},
        "optimizer": {"exp_avg": torch.randn(third), "exp_avg_sq": torch.rand(third)},
        "iteration": 0,
    }


def dd(folder: Path, mb: int, flag: str) -> float:
    path = folder / "dd.bin"
    t = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={mb // 16}", flag], check=True, capture_output=True
    )
    seconds = time.perf_counter() - t
    path.unlink()
    return seconds


def drop_caches() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass  # not root: loads may come from the page cache


def main() -> int:
    state = state_of(SIZE_MB)
    nbytes = sum(t.numel() * 4 for part in ("model", "optimizer") for t in state[part].values())
    gib = nbytes / 2**30
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-ckpt-") as d:
        folder = Path(d)
        direct = [dd(folder, SIZE_MB, "oflag=direct") for _ in range(REPEATS)]
        fsync = [dd(folder, SIZE_MB, "conv=fsync") for _ in range(REPEATS)]
        sync, prune = [], []
        for i in range(REPEATS):
            t = time.perf_counter()
            checkpoint.save(folder / "sync", i + 1, state)
            sync.append(time.perf_counter() - t)
            t = time.perf_counter()
            checkpoint.prune(folder / "sync", 1)  # what keep_last adds to a save: the previous one deleted
            prune.append(time.perf_counter() - t)
        saver, blocked, behind = checkpoint.AsyncSaver(), [], []
        for i in range(REPEATS):
            t = time.perf_counter()
            saver.save(folder / "async", i + 1, state, keep_last=1)
            blocked.append(time.perf_counter() - t)
            saver.wait()
            behind.append(time.perf_counter() - t)
        loads = []
        for _ in range(REPEATS):
            drop_caches()
            t = time.perf_counter()
            loaded = checkpoint.load_latest(folder / "sync")
            loads.append(time.perf_counter() - t)
            assert loaded is not None
    rate = lambda seconds: [gib / s for s in seconds]  # noqa: E731
    rows = [
        ["`dd oflag=direct` (the disk's limit)", spread(direct), spread(rate(direct), "GiB/s")],
        ["`dd conv=fsync`", spread(fsync), spread(rate(fsync), "GiB/s")],
        ["hpc-mm atomic save (training blocked all along)", spread(sync), spread(rate(sync), "GiB/s")],
        ["keep_last: deleting the previous checkpoint after a save", spread(prune[1:]), "-"],
        ["async save: training blocked", spread(blocked), "-"],
        ["async save: written and committed after", spread(behind), spread(rate(behind), "GiB/s")],
        ["load (verify sizes, weights_only load; page cache dropped)", spread(loads), spread(rate(loads), "GiB/s")],
    ]
    print(table([f"{gib:.2f} GiB of tensors", "time, median (min-max)", "throughput"], rows))
    med = statistics.median
    print(
        f"\nsave throughput {med(direct) / med(sync):.0%} of `dd oflag=direct`; "
        f"async save blocks training {med(blocked) / med(sync):.2f}x the sync save.\n"
    )
    print(
        verdict(
            "async save: training blocked, against the sync save", med(blocked) / med(sync), 0.1, lambda v: f"{v:.2f}x"
        )
    )
    print(
        verdict(
            "save throughput, against `dd oflag=direct`",
            med(direct) / med(sync),
            0.6,
            lambda v: f"{v:.0%}",
            higher_is_better=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
