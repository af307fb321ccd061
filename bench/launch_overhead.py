"""Launch overhead: `hpc-mm launch` against a hand-written launch of the same trainer and argv.

One Slurm allocation of 2 nodes (the test cluster), job steps run one after another,
interleaved (A B C D, A B C D, ...), each in a fresh run directory:
- hpc-mm, launcher torchrun: `srun --ntasks-per-node 1 hpc-mm launch JOB`
- hand-written torchrun:     `srun --ntasks-per-node 1 bash -c 'python -m torch.distributed.run
                              --nnodes 2 --nproc-per-node 2 --node-rank $SLURM_NODEID --master-addr ...
                              -m hpc_mm.train <the argv of `hpc-mm args JOB`>'`
- hpc-mm, launcher srun:     `srun --ntasks-per-node 2 hpc-mm launch JOB` (entry.launcher: srun)
- hand-written srun:         `srun --ntasks-per-node 2 bash -c 'OMP_NUM_THREADS=1 RANK=$SLURM_PROCID ...
                              python -m hpc_mm.train ...'` (one thread a rank, as torchrun sets it)
Measured: from `srun` starting to the first completed iteration (rank 0's metrics.jsonl row),
and the whole step (srun start to srun end) for a 30-iteration job. Then, outside Slurm, what
one task's `hpc-mm launch` costs before it starts the entry (Python, imports, plan, preflight),
as wall and CPU time of a process that does just that. Prints Markdown.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Allocation, ratio, spread, table, timed, verdict  # noqa: E402

JOB = str(ROOT / "jobs" / "tiny-vlm.yaml")
PY = sys.executable
REPEATS = int(os.environ.get("BENCH_REPEATS", 7))
SETS = ["gpt.train_iters=30", "checkpoint.save_interval=1000", "slurm.nodes=2", "distributed.nproc_per_node=2"]


def sets(extra: list[str] = ()) -> list[str]:
    return [a for o in [*SETS, *extra] for a in ("--set", o)]


def hand_argv(run_dir: Path) -> str:
    out = subprocess.run(
        [PY, "-m", "hpc_mm", "args", JOB, "--run-dir", str(run_dir), *sets()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return out


def first_host(alloc: Allocation) -> str:
    nodes = subprocess.run(["squeue", "-h", "-j", alloc.job_id, "-o", "%N"], capture_output=True, text=True).stdout
    return subprocess.run(
        ["scontrol", "show", "hostnames", nodes.strip()], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def commands(alloc: Allocation, run_dir: Path, port: int) -> dict[str, list[str]]:
    master = first_host(alloc)
    argv = hand_argv(run_dir)
    torchrun = (
        f"exec {shlex.quote(PY)} -m torch.distributed.run --nnodes 2 --nproc-per-node 2 "
        f"--node-rank $SLURM_NODEID --master-addr {master} --master-port {port} --max-restarts 0 "
        f"-m hpc_mm.train {argv}"
    )
    per_rank = (
        f"OMP_NUM_THREADS=1 RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
        f"LOCAL_WORLD_SIZE=2 "
        f"MASTER_ADDR={master} MASTER_PORT={port} exec {shlex.quote(PY)} -u -m hpc_mm.train {argv}"
    )
    return {
        "hpc-mm launch (torchrun)": alloc.srun(
            "--ntasks-per-node=1", PY, "-m", "hpc_mm", "launch", JOB, "--run-dir", str(run_dir), *sets()
        ),
        "hand-written torchrun": alloc.srun("--ntasks-per-node=1", "bash", "-c", torchrun),
        "hpc-mm launch (srun)": alloc.srun(
            "--ntasks-per-node=2",
            PY,
            "-m",
            "hpc_mm",
            "launch",
            JOB,
            "--run-dir",
            str(run_dir),
            *sets(["entry.launcher=srun"]),
        ),
        "hand-written srun": alloc.srun("--ntasks-per-node=2", "bash", "-c", per_rank),
    }


def one(cmd: list[str], run_dir: Path) -> tuple[float, float]:
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    scratch = run_dir.parent / f"tmp-{run_dir.name}"  # the hand-written torchrun leaves torchelastic_* there
    scratch.mkdir()
    subprocess.run(cmd, check=True, capture_output=True, cwd=run_dir.parent, env={**os.environ, "TMPDIR": str(scratch)})
    end = time.time()
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["time"]
    return first - start, end - start


OWN_WORK = """
import sys
from pathlib import Path
from hpc_mm.launch import preflight
from hpc_mm.launch.command import child_env, command, interpreter
from hpc_mm.launch.plan import resolve_plan
plan = resolve_plan(sys.argv[1], sys.argv[3:], Path(sys.argv[2]))
workdir = Path(plan.spec.entry.workdir)
preflight.workdir(workdir)
if plan.node_leader:
    preflight.interpreter(interpreter(plan), workdir, preflight.needed_modules(plan.device, workdir, plan.spec.builtin))
command(plan, None), child_env(plan, 60)
"""


def own_work(local_rank: int, repeats: int = 7) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of one srun task's launcher up to starting the entry (no Slurm needed)."""
    env = {
        **os.environ,
        "SLURM_JOB_ID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(local_rank),
        "SLURM_LOCALID": str(local_rank),
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_STEP_NODELIST": "n[1-2]",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_TASKS_PER_NODE": "2(x2)",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURMD_NODENAME": "n1",
    }
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([PY, "-c", OWN_WORK, JOB, f"{d}/run", *SETS, "entry.launcher=srun"], env=env, check=True)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return walls, cpus


def main() -> int:
    results: dict[str, tuple[list[float], list[float]]] = {}
    with Allocation(2) as alloc, tempfile.TemporaryDirectory() as d:
        for rep in range(REPEATS):
            for i, name in enumerate(commands(alloc, Path(d) / "probe", 20000)):
                run_dir = Path(d) / f"{rep}-{i}"
                cmd = commands(alloc, run_dir, 20100 + rep * 10 + i)[name]
                first, whole = one(cmd, run_dir)
                results.setdefault(name, ([], []))
                results[name][0].append(first)
                results[name][1].append(whole)
    rows = []
    for ours, theirs in (
        ("hpc-mm launch (torchrun)", "hand-written torchrun"),
        ("hpc-mm launch (srun)", "hand-written srun"),
    ):
        for name in (theirs, ours):
            first, whole = results[name]
            rows.append(
                [
                    name,
                    spread(first),
                    spread(whole),
                    ratio(first, results[theirs][0]) if name == ours else "-",
                    ratio(whole, results[theirs][1]) if name == ours else "-",
                ]
            )
    print(
        table(
            [
                "2 nodes x 2 ranks, 30 iterations",
                "srun start -> first iteration",
                "whole step",
                "ratio (first iteration)",
                "ratio (whole step)",
            ],
            rows,
        )
    )
    overhead = {n: statistics.median(results[n][0]) for n in results}
    print(
        f"\n{REPEATS} interleaved runs of each in one allocation; median (min-max). "
        "hpc-mm's own time before training: "
        f"{overhead['hpc-mm launch (torchrun)'] - overhead['hand-written torchrun']:+.2f} s "
        f"(torchrun mode), {overhead['hpc-mm launch (srun)'] - overhead['hand-written srun']:+.2f} s (srun mode).\n"
    )
    rows = []
    for local_rank, what in ((0, "local rank 0 (checks the interpreter)"), (1, "any other rank")):
        wall, cpu = own_work(local_rank)
        rows.append([f"one task's `hpc-mm launch` before the entry starts, {what}", spread(wall), spread(cpu)])
    floor = timed([PY, "-c", "pass"], 7)
    rows.append(["`python -c pass`, for scale", spread(floor), "-"])
    print(table(["alone on an idle machine", "wall", "CPU (user + system)"], rows))
    print()
    med = statistics.median
    times = lambda v: f"{v:.2f}x"  # noqa: E731
    for ours, theirs in (
        ("hpc-mm launch (torchrun)", "hand-written torchrun"),
        ("hpc-mm launch (srun)", "hand-written srun"),
    ):
        for i, what in ((0, "first iteration"), (1, "whole step")):
            print(verdict(f"{ours}, {what}", med(results[ours][i]) / med(results[theirs][i]), 1.05, times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
