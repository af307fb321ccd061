"""Shared by the benchmarks: statistics as BENCHMARKS.md shows them, and a Slurm allocation."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """`median (min-max)`, the form every table uses."""
    if not values:
        return "-"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def ratio(ours: list[float], theirs: list[float]) -> str:
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timed(cmd: list[str], repeats: int, **kw) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, **kw)
        out.append(time.perf_counter() - t)
    return out


class Allocation:
    """`salloc --no-shell`: nodes held for the benchmark's job steps, released at the end."""

    def __init__(self, nodes: int, partition: str = "low", name: str = "hpc-mm-bench"):
        out = subprocess.run(
            ["salloc", "--no-shell", "-N", str(nodes), "--exclusive", "-p", partition, "-J", name, "-t", "60"],
            capture_output=True,
            text=True,
            check=True,
        )
        text = out.stdout + out.stderr
        self.job_id = text.split("Granted job allocation")[1].split()[0]
        self.nodes = nodes

    def srun(self, *args: str) -> list[str]:
        return ["srun", f"--jobid={self.job_id}", "-N", str(self.nodes), "--kill-on-bad-exit=1", *args]

    def close(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def verdict(what: str, value: float, target: float, shown: str, higher_is_better: bool = False) -> str:
    """One line per target: the measured value, the target, met or missed and by how much."""
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    if met:
        return f"- {what}: **{shown(value)}**, target {sign} {shown(target)}: met"
    gap = (target / value if higher_is_better else value / target) - 1
    return f"- {what}: **{shown(value)}**, target {sign} {shown(target)}: **missed** by {gap:.0%}"


def submit_tiny(run_dir: Path, overrides: list[str], job: Path = ROOT / "jobs" / "tiny-vlm.yaml") -> str:
    """`hpc-mm submit` of the tiny job with these --set values; the job id."""
    import json
    import sys

    args = [a for o in overrides for a in ("--set", o)]
    out = subprocess.run(
        [sys.executable, "-m", "hpc_mm", "submit", str(job), "--run-dir", str(run_dir), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=run_dir.parent,
    )
    return json.loads(out.stdout)["job_id"]


def job_processes(node: str, job_id: str, ranks_only: bool) -> list[int]:
    """The processes of job `job_id` on one emulated node (by SLURMD_NODENAME); `ranks_only`: its ranks."""
    from hpc_mm.launch.standby import stand_in

    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            values = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURMD_NODENAME={node}".encode() in values and f"SLURM_JOB_ID={job_id}".encode() in values:
            if not ranks_only or any(v.startswith(b"RANK=") for v in values):
                pid = int(environ.parent.name)
                # a rank run by a standby interpreter: the training process is the standby, not its client
                found.append((stand_in(pid) or pid) if ranks_only else pid)
    return found
