"""Checkpoints: write throughput against the disk's own limit, how long training is held by a
synchronous and an asynchronous save in a real training loop, load time against a direct read of
the same file, and what the launcher's prefetch saves a restart.

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


class Training:
    """A real training step on a model whose state (weights and AdamW's two moments) is about 1 GiB:
    what an async save runs beside."""

    def __init__(self, width: int = 4096, layers: int = 5, batch: int = 16):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, width)
        self.step()  # the moments exist from here on

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "iteration": 0}

    def step(self, saver=None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.x).square().mean().backward()
        if saver is not None:
            saver.before_update()  # as the built-in trainer does before its optimizer step
        self.optimizer.step()

    def gib(self) -> float:
        return sum(t.numel() * t.element_size() for t in _tensors(self.state())) / 2**30


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def async_against_sync(folder: Path, repeats: int = REPEATS) -> dict[str, list[float]]:
    """In a training loop: the sync save's time; what an async save holds the step it is made in
    (the call, and the wait before the optimizer step), and how much longer the steps are while it
    writes (its threads share the CPUs), against steps with no save."""
    training = Training()
    plain = []
    for _ in range(5):
        t = time.perf_counter()
        training.step()
        plain.append(time.perf_counter() - t)
    step = statistics.median(plain)
    sync, held, slowed, written = [], [], [], []
    saver = checkpoint.AsyncSaver()
    for i in range(repeats):
        t = time.perf_counter()
        checkpoint.save(folder / "sync", i + 1, training.state(), keep_last=1)
        sync.append(time.perf_counter() - t)
        t = time.perf_counter()
        saver.save(folder / "async", i + 1, training.state(), keep_last=1)
        training.step(saver)
        held.append(saver.blocked_seconds)
        steps = 1
        while saver._thread is not None and saver._thread.is_alive():
            training.step(saver)
            steps += 1
        saver.wait()
        written.append(time.perf_counter() - t)
        slowed.append(max(0.0, written[-1] - steps * step))
    return {"step": plain, "sync": sync, "held": held, "slowed": slowed, "written": written, "gib": [training.gib()]}


def stall_ratio() -> float:
    """What an async save holds training over the sync save's time (1 GiB of state, a real step)."""
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-ckpt-") as d:
        found = async_against_sync(Path(d))
    return statistics.median(found["held"]) / statistics.median(found["sync"])


def restart_load(folder: Path, start_seconds: float, prefetch: bool) -> float:
    """A restart's load with the page cache dropped: the interpreter takes `start_seconds` to come
    up (while the launcher's prefetch reads, or nothing does), then the trainer loads. The load's time."""
    from hpc_mm.launch.prefetch import Prefetch
    from hpc_mm.run.checkpoints import iter_dir, latest_whole

    drop_caches()
    if prefetch:
        files = sorted(p for p in iter_dir(folder, latest_whole(folder)).rglob("*") if p.is_file())
        Prefetch(files).start()
    time.sleep(start_seconds)
    t = time.perf_counter()
    assert checkpoint.load_latest(folder) is not None
    return time.perf_counter() - t


def dd_read(path: Path) -> float:
    drop_caches()
    t = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    state = state_of(SIZE_MB)
    nbytes = sum(t.numel() * 4 for part in ("model", "optimizer") for t in state[part].values())
    gib = nbytes / 2**30
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-ckpt-") as d:
        folder = Path(d)
        direct = [dd(folder, SIZE_MB, "oflag=direct") for _ in range(REPEATS)]
        sync, prune = [], []
        for i in range(REPEATS):
            t = time.perf_counter()
            checkpoint.save(folder / "sync", i + 1, state)
            sync.append(time.perf_counter() - t)
            t = time.perf_counter()
            checkpoint.prune(folder / "sync", 1)  # what keep_last adds to a save: the previous one deleted
            prune.append(time.perf_counter() - t)
        model_file = next((folder / "sync").glob("iter_*/mp_rank_00/*.pt"))
        reads, loads = [], []
        for _ in range(REPEATS):
            reads.append(dd_read(model_file))
            drop_caches()
            t = time.perf_counter()
            assert checkpoint.load_latest(folder / "sync") is not None
            loads.append(time.perf_counter() - t)
        restarts = {
            (start, fetch): [restart_load(folder / "sync", start, fetch) for _ in range(REPEATS)]
            for start in (0.3, 2.5)
            for fetch in (False, True)
        }
        del state
        training = async_against_sync(folder)
    rate = lambda seconds: [gib / s for s in seconds]  # noqa: E731
    med = statistics.median
    rows = [
        ["`dd oflag=direct` write (the disk's limit)", spread(direct), spread(rate(direct), "GiB/s")],
        ["hpc-mm atomic save (training held all along)", spread(sync), spread(rate(sync), "GiB/s")],
        ["keep_last: deleting the previous checkpoint after a save", spread(prune[1:]), "-"],
        ["`dd iflag=direct` read of the checkpoint file", spread(reads), spread(rate(reads), "GiB/s")],
        [
            "built-in trainer's load (checksums, weights_only; page cache dropped)",
            spread(loads),
            spread(rate(loads), "GiB/s"),
        ],  # fmt: skip
    ]
    for (start, fetch), values in restarts.items():
        what = f"a restart's load, interpreter up after {start:g} s, " + ("with prefetch" if fetch else "no prefetch")
        rows.append([what, spread(values), spread(rate(values), "GiB/s")])
    print(table([f"{gib:.2f} GiB of tensors", "time, median (min-max)", "throughput"], rows))
    t = training
    print()
    print(
        table(
            [f"async save in a training loop ({t['gib'][0]:.2f} GiB: weights and AdamW moments)", "median (min-max)"],
            [
                ["a training step without a save (forward, backward, AdamW)", spread(t["step"])],
                ["sync save: training held", spread(t["sync"])],
                ["async save: the step it is made in held (the copy beyond forward and backward)", spread(t["held"])],
                ["async save: the steps while it writes, longer in all by (2 cores shared)", spread(t["slowed"])],
                ["async save: written and committed after", spread(t["written"])],
            ],
        )
    )
    ratio = med(t["held"]) / med(t["sync"])
    print(
        f"\nsave throughput {med(direct) / med(sync):.0%} of `dd oflag=direct`; load {med(reads) / med(loads):.0%} of "
        f"`dd iflag=direct`; async save holds training {ratio:.3f}x the sync save "
        f"({(med(t['held']) + med(t['slowed'])) / med(t['sync']):.2f}x counting the slower steps while it writes).\n"
    )
    print(verdict("async save: training held, against the sync save", ratio, 0.1, lambda v: f"{v:.3f}x"))
    print(
        verdict("save throughput, against `dd oflag=direct`", med(direct) / med(sync), 0.6, lambda v: f"{v:.0%}", True)
    )
    print(verdict("load (page cache dropped), against `dd iflag=direct`", med(reads) / med(loads), 0.6,
                  lambda v: f"{v:.0%}", True))  # fmt: skip
    gain = med(restarts[(2.5, False)]) / med(restarts[(2.5, True)])
    print(f"- prefetch during a cold interpreter start (2.5 s): the load {gain:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
