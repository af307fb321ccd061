"""What straggler detection costs training: the tiny job, 2 emulated nodes x 1 rank under `hpc-mm
local` (mpirun, torchrun, gloo), with detection on (each rank's compute time per step, read from
the scheduler's schedstat and carried in the loss all-reduce; node 0's launcher names stragglers
from the metrics rows) and off (fault.straggler_detection: false), alternated, ROUNDS runs each.
Step time: the run's mean step after WARMUP iterations (from its metrics rows). Prints Markdown.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, spread, table, verdict  # noqa: E402

ROUNDS = 5
ITERS = 600
WARMUP = 50


def run(folder: Path, on: bool, i: int) -> float:
    run_dir = folder / f"{'on' if on else 'off'}-{i}"
    sets = ["gpt.train_iters=600", "checkpoint.save_interval=100000", "gpt.log_interval=100",
            f"fault.straggler_detection={'true' if on else 'false'}", "distributed.nproc_per_node=1",
            "env.OMP_NUM_THREADS='1'"]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "hpc_mm", "local", str(ROOT / "jobs" / "tiny-vlm.yaml"), "--run-dir", str(run_dir),
         *[a for s in sets for a in ("--set", s)]],
        check=True, capture_output=True, cwd=folder,
    )  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["iteration"] > WARMUP]
    assert any(r.get("rank_seconds") for r in rows) == on  # (every 10th row carries the ranks' times)
    return (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["iteration"] - rows[0]["iteration"])


def timing_cost(calls: int = 20000) -> list[list[str]]:
    """What the trainer adds around each micro-batch (OwnTime.begin/end: the schedstat reads, and the
    throttled time of each cgroup holding a CPU quota), per pair of calls, in this process: as it runs
    here, and inside a cgroup with a quota (cgroup v1, root only)."""
    from hpc_mm.train.cpuwait import CpuWait, OwnTime

    def per_pair() -> float:
        own = OwnTime(CpuWait())
        began = time.perf_counter()
        for _ in range(calls):
            own.begin()
            own.end()
        return (time.perf_counter() - began) / calls

    rows = [["OwnTime.begin() + end(), no CPU quota", f"{per_pair() * 1e6:.1f} us"]]
    group = Path("/sys/fs/cgroup/cpu") / f"hpc-mm-bench-{os.getpid()}"
    try:
        group.mkdir()
    except OSError:
        return rows
    try:
        (group / "cpu.cfs_quota_us").write_text("200000")  # two CPUs: never binds one thread (the reads only)
        (group / "cgroup.procs").write_text(str(os.getpid()))
        rows.append(["OwnTime.begin() + end(), in a cgroup with a CPU quota", f"{per_pair() * 1e6:.1f} us"])
    finally:
        (group.parent / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()
    return rows


def main() -> int:
    print(table(["what the trainer adds around a micro-batch", "per pair of calls"], timing_cost()))
    print()
    on, off = [], []
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-stragglers-") as d:
        for i in range(ROUNDS):
            off.append(run(Path(d), False, i))
            on.append(run(Path(d), True, i))
    overhead = statistics.median(on) / statistics.median(off) - 1
    print(
        table(
            ["tiny job, 2 nodes x 1 rank, `hpc-mm local`", f"step time, median (min-max) of {ROUNDS} runs"],
            [
                ["straggler detection off", spread([v * 1000 for v in off], "ms", 1)],
                ["straggler detection on", spread([v * 1000 for v in on], "ms", 1)],
            ],
        )
    )
    print()
    print(verdict("overhead of straggler detection on the step", overhead, 0.01, lambda v: f"{v:+.1%}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
