"""How `hpc-mm validate` fares against hostile job files: peak memory and wall time.

An alias bomb (12 levels of 10 aliases: 10^12 values if expanded), /dev/zero, /dev/urandom and
a FIFO with a writer that never stops. Each is refused with one line; the table shows that
this costs less than 1 s and 200 MB. Prints a Markdown table.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], capture_output=True); w = time.perf_counter() - t; "
    "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
)


def measure(path: str) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, sys.executable, "-m", "hpc_mm", "validate", path],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024, int(out[2])


def bomb_file(folder: Path) -> str:
    lines = ["name: bomb", "l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 12)]
    (folder / "bomb.yaml").write_text("\n".join(lines) + "\n")
    return str(folder / "bomb.yaml")


def main():
    with tempfile.TemporaryDirectory() as d:
        fifo = Path(d) / "endless.fifo"
        os.mkfifo(fifo)
        stop = threading.Event()

        def writer():
            while not stop.is_set():
                try:
                    with open(fifo, "wb") as f:
                        while not stop.is_set():
                            f.write(b"a: b\n" * 1000)
                except OSError:
                    time.sleep(0.01)

        threading.Thread(target=writer, daemon=True).start()
        cases = [
            ("alias bomb (10^12 values)", bomb_file(Path(d))),
            ("/dev/zero", "/dev/zero"),
            ("/dev/urandom", "/dev/urandom"),
            ("FIFO that never ends", str(fifo)),
            ("jobs/qwen2vl-7b.yaml (valid)", str(ROOT / "jobs" / "qwen2vl-7b.yaml")),
        ]
        print("| input | exit code | median wall time | peak RSS |")
        print("|---|---:|---:|---:|")
        for name, path in cases:
            runs = [measure(path) for _ in range(5)]
            wall = statistics.median(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            print(f"| {name} | {runs[0][2]} | {wall:.2f} s | {rss:.0f} MB |", flush=True)
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
