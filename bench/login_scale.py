"""Login node and scale: what hpc-mm costs where users wait for it.

1. The login-node commands (validate, args, render, submit --dry-run) against the floor of any
   Python tool, `python -c pass`, and `python -c "import submitit"` (what submitting costs at
   least), with `import torch` and `import megatron.core` for scale. Median (min-max) of 7 runs.
2. Environment resolution for one process of a 4096-node x 8-rank Slurm allocation: the launch
   plan (`resolve_plan`: job file, Slurm variables, ranks, hosts, master, port), in-process, and
   `hpc-mm env` as a whole process.
3. 1,000 job files: `hpc-mm validate` of all of them in one call, and rendering each one's sbatch
   script through the library.
Prints Markdown. Slurm must be up for `submit --dry-run` (bench/run_all starts the test cluster).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, spread, table, timed, verdict  # noqa: E402

JOB = str(ROOT / "jobs" / "qwen2vl-7b.yaml")
TINY = str(ROOT / "jobs" / "tiny-vlm.yaml")
RUNS = 7
MEDIANS: dict[str, float] = {}  # what the targets are checked against


def big_slurm_env(nodes: int = 4096, per_node: int = 8, rank: int = 4096 * 8 - 3) -> dict:
    """The variables srun gives one task of a `-N 4096 --ntasks-per-node 8` step."""
    node = rank // per_node
    return {
        **os.environ,
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % per_node),
        "SLURM_NODEID": str(node),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_STEP_NUM_TASKS": str(nodes * per_node),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_STEP_NODELIST": f"gpu[{1:05d}-{nodes:05d}]",
        "SLURM_JOB_NODELIST": f"gpu[{1:05d}-{nodes:05d}]",
        "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURMD_NODENAME": f"gpu{node + 1:05d}",
        "SLURM_RESTART_COUNT": "0",
    }


def login_rows(d: str) -> list[list[str]]:
    py = sys.executable
    commands = [
        ("`python -c pass`", [py, "-c", "pass"]),
        ('`python -c "import submitit"`', [py, "-c", "import submitit"]),
        ("`hpc-mm validate` (qwen2vl-7b)", [py, "-m", "hpc_mm", "validate", JOB]),
        ("`hpc-mm args` (qwen2vl-7b)", [py, "-m", "hpc_mm", "args", JOB]),
        ("`hpc-mm render` (qwen2vl-7b)", [py, "-m", "hpc_mm", "render", JOB, "--run-dir", f"{d}/r", "-o", f"{d}/s"]),
    ]
    if shutil.which("sbatch") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        commands.append(
            (
                "`hpc-mm submit --dry-run` (tiny-vlm, sbatch --test-only)",
                [py, "-m", "hpc_mm", "submit", TINY, "--dry-run", "--run-dir", f"{d}/dry"],
            )
        )
    commands += [
        ('`python -c "import torch"`', [py, "-c", "import torch"]),
        ('`python -c "import megatron.core"`', [py, "-W", "ignore", "-c", "import megatron.core"]),
    ]
    rows, floor = [], None
    for name, cmd in commands:
        times = timed(cmd, RUNS, cwd=d)
        MEDIANS[name] = statistics.median(times)
        if floor is None:
            floor = statistics.median(times)
            rows.append([name, spread(times), "-"])
        else:
            rows.append([name, spread(times), f"+{statistics.median(times) - floor:.2f} s"])
    return rows


def env_rows() -> list[list[str]]:
    from hpc_mm.launch.plan import resolve_plan

    env = big_slurm_env()
    with tempfile.TemporaryDirectory() as d:
        # launcher srun: one process per rank, 8 per node (the plan of one of 32768 processes)
        overrides = [
            "slurm.nodes=4096",
            "distributed.nproc_per_node=8",
            "entry.launcher=srun",
            "gpt.global_batch_size=131072",
        ]  # MBS 4 x DP 32768
        inproc = []
        for _ in range(RUNS):
            t = time.perf_counter()
            plan = resolve_plan(TINY, overrides, Path(d) / "run", env=env)
            inproc.append(time.perf_counter() - t)
        MEDIANS["resolve_plan"] = statistics.median(inproc)
        assert (plan.rank, plan.world_size, plan.nnodes, len(plan.hosts)) == (32765, 32768, 4096, 4096), plan
        whole = timed(
            [
                sys.executable,
                "-m",
                "hpc_mm",
                "env",
                TINY,
                "--json",
                *sum((["--set", o] for o in overrides), []),
                "--run-dir",
                f"{d}/run",
            ],
            RUNS,
            env=env,
            cwd=d,
        )
    return [
        [
            "resolve_plan in the process (job file, Slurm variables, 4096 hosts, ranks, master, port)",
            spread([t * 1000 for t in inproc], "ms", 1),
        ],
        ["`hpc-mm env --json`, the whole process", spread([t * 1000 for t in whole], "ms", 0)],
    ]


def many_rows(n: int = 1000) -> list[list[str]]:
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.slurm.render import render_script

    with tempfile.TemporaryDirectory() as d:
        text = Path(TINY).read_text()
        for sub in ("tiny-vlm",):
            shutil.copytree(Path(TINY).parent / sub, Path(d) / sub)
        files = []
        for i in range(n):
            path = Path(d) / f"job{i:04d}.yaml"
            path.write_text(text.replace("name: tiny-vlm", f"name: tiny-vlm-{i}"))
            files.append(str(path))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpc_mm", "validate", *files], check=True, capture_output=True, cwd=d)
        validate = time.perf_counter() - t
        t = time.perf_counter()
        for i, path in enumerate(files):
            render_script(load_job(path), Path(d) / "runs" / str(i))
        render = time.perf_counter() - t
    return [
        [f"`hpc-mm validate` of {n} job files, one call", f"{validate:.2f} s", f"{validate / n * 1000:.1f} ms"],
        [f"load + render {n} job files (library)", f"{render:.2f} s", f"{render / n * 1000:.1f} ms"],
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        print(table(["command", "wall time, median (min-max)", "above `python -c pass`"], login_rows(d)))
    print()
    print(table(["4096 nodes x 8 ranks, one process", "median (min-max)"], env_rows()))
    print()
    print(table(["scale", "total", "per job file"], many_rows()))
    print()
    print(
        verdict(
            "4096 x 8 environment resolution (resolve_plan, one process)",
            MEDIANS["resolve_plan"] * 1000,
            50,
            lambda v: f"{v:.1f} ms",
        )
    )
    print(verdict("`hpc-mm validate`, median", MEDIANS["`hpc-mm validate` (qwen2vl-7b)"], 0.15, lambda v: f"{v:.2f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
