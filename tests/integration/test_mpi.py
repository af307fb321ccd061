"""Real mpirun (Open MPI): environment agreement and the one-machine multi-node emulation."""

import json
import os
import subprocess

from hpc_mm.run.rundir import read_events

from conftest import HPC_MM, JOBS, run_cli


def mpirun(np_: int, *cmd):
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return subprocess.run(
        ["mpirun", "-np", str(np_), "--oversubscribe", *root, *cmd], capture_output=True, text=True, timeout=300
    )


def test_mpirun_env_agrees_on_master(tmp_path):
    result = mpirun(4, *HPC_MM, "env", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in rows) == [0, 1, 2, 3]
    assert {r["world_size"] for r in rows} == {4} and {r["launcher"] for r in rows} == {"mpi"}
    assert len({r["master_addr"] for r in rows}) == 1 and len({r["master_port"] for r in rows}) == 1
    assert sorted(r["local_rank"] for r in rows) == [0, 1, 2, 3]  # all on this one host


def test_local_emulates_two_nodes(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "local",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        run_dir,
        "--set",
        "gpt.train_iters=20",
        "--set",
        "gpt.lr_warmup_iters=5",
        "--set",
        "checkpoint.save_interval=10",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = run_cli("logs", run_dir, check=True).stdout  # each emulated node's own log, as on Slurm
    assert "mpi agent node 0/2 world 4" in out and "mpi agent node 1/2 world 4" in out
    assert "iteration 20/20" in result.stdout and "checkpoints   10, 20" in result.stdout  # progress, summary
    kinds = [e["event"] for e in read_events(run_dir)]
    assert kinds[:2] == ["submitted", "started"] and kinds[-1] == "completed"
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "20"
