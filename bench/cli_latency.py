"""Login-node latency: hpc-mm's validate/args/render vs importing torch or megatron-core.

Why it matters: these commands run on shared login nodes and in tight edit-validate loops;
hpc-mm keeps torch and megatron off that path. Median of 5 runs each, wall clock.
Prints a Markdown table.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = str(ROOT / "jobs" / "qwen2vl-7b.yaml")
RUNS = 5


def timed(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        rows = [
            ("hpc-mm validate (qwen2vl-7b)", [py, "-m", "hpc_mm", "validate", JOB]),
            ("hpc-mm args (qwen2vl-7b)", [py, "-m", "hpc_mm", "args", JOB]),
            ("hpc-mm render (qwen2vl-7b)", [py, "-m", "hpc_mm", "render", JOB, "--run-dir", f"{d}/r", "-o", f"{d}/s"]),
            ("python -c 'import torch'", [py, "-c", "import torch"]),
            ("python -c 'import megatron.core'", [py, "-W", "ignore", "-c", "import megatron.core"]),
        ]
        print("| command | median wall time |")
        print("|---|---:|")
        for name, cmd in rows:
            print(f"| `{name}` | {timed(cmd):.2f} s |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
