"""What reading the entry's output costs: the launcher copies every line of the entry's output
to the task's log and parses Megatron's log lines (launch/progress.py).

1. The watcher alone: Megatron iteration lines parsed per second.
2. Training: the built-in trainer (1 node x 2 ranks, an iteration line every iteration) started
   by `hpc-mm launch` (output through the watcher) and by the same torchrun command with its
   output straight to a file (the same environment otherwise); median samples/s over every
   iteration of 5 interleaved runs each (this 2-core machine varies by several % run to run).
Prints a Markdown table.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LINE = (
    " [2026-11-29 10:00:00] iteration      {i:>3}/   10000 | consumed samples:        12800 | elapsed time per "
    "iteration (ms): 1234.5 | learning rate: 9.876543E-06 | global batch size:   768 | lm loss: 1.234567E+00 | "
    "loss scale: 1.0 | grad norm: 1.234 | number of skipped iterations:   0 | number of nan iterations:   0 |"
)
JOB = [
    "--nodes",
    "1",
    "--nproc-per-node",
    "2",
    "--set",
    "gpt.train_iters=300",
    "--set",
    "gpt.log_interval=1",
    "--set",
    "gpt.global_batch_size=16",
    "--set",
    "checkpoint.save_interval=1000",
]


def watcher_rate() -> float:
    from hpc_mm.launch.progress import Progress

    with tempfile.TemporaryDirectory() as d:
        progress = Progress(Path(d))
        lines = [LINE.format(i=i) for i in range(20000)]
        start = time.perf_counter()
        for line in lines:
            progress.feed(line)
        return len(lines) / (time.perf_counter() - start)


def speed(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_second"] for r in rows[20:]]


def through_launch(folder: Path) -> list[float]:
    run_dir = folder / "launch"
    subprocess.run(
        [sys.executable, "-m", "hpc_mm", "launch", str(ROOT / "jobs/tiny-vlm.yaml"), "--run-dir", str(run_dir), *JOB],
        check=True,
        capture_output=True,
    )
    return speed(run_dir)


def direct(folder: Path) -> list[float]:
    run_dir = folder / "direct"
    args = subprocess.run(
        [sys.executable, "-m", "hpc_mm", "args", str(ROOT / "jobs/tiny-vlm.yaml"), "--run-dir", str(run_dir), *JOB],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    run_dir.mkdir(parents=True)
    with open(folder / "direct.log", "w") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                "29517",
                "-m",
                "hpc_mm.train",
                *args,
            ],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )  # as launch sets
    return speed(run_dir)


def main():
    rate = watcher_rate()
    launched, straight = [], []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as d:
            launched.append(through_launch(Path(d)))
            straight.append(direct(Path(d)))
    a = statistics.median(x for run in launched for x in run)
    b = statistics.median(x for run in straight for x in run)
    per_run_a = [statistics.median(run) for run in launched]
    per_run_b = [statistics.median(run) for run in straight]
    print("| measure | result |")
    print("|---|---:|")
    print(f"| watcher: Megatron iteration lines parsed per second | {rate:,.0f} |")
    print(
        f"| built-in trainer, output through `hpc-mm launch` (samples/s; runs min-max) | {a:.0f} "
        f"({min(per_run_a):.0f}-{max(per_run_a):.0f}) |"
    )
    print(f"| same torchrun command, output straight to a file | {b:.0f} ({min(per_run_b):.0f}-{max(per_run_b):.0f}) |")
    print(f"| ratio | {a / b:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
