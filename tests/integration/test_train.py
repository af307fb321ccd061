"""The built-in trainer under `hpc-mm launch`: real torch.distributed (gloo), 4 processes."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from hpc_mm.run.rundir import read_events
from hpc_mm.train import checkpoint

from conftest import HPC_MM, JOBS, run_cli

FOUR_PROCS = ["--nodes", "1", "--nproc-per-node", "4"]
LOG_LINE = "iteration      200/     200 | consumed samples:         6400 |"


def launch(run_dir, *extra, **kwargs):
    return subprocess.Popen(
        [*HPC_MM, "launch", str(JOBS / "tiny-vlm.yaml"), "--run-dir", str(run_dir), *FOUR_PROCS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def metrics(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    proc = launch(run_dir)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return run_dir, out


def test_trains_200_iterations_with_4_processes(full_run):
    run_dir, out = full_run
    rows = metrics(run_dir)
    assert [r["iteration"] for r in rows] == list(range(1, 201))
    assert rows[-1]["loss"] < rows[0]["loss"] / 2, (rows[0]["loss"], rows[-1]["loss"])
    assert LOG_LINE in out and "lm loss:" in out and "grad norm:" in out
    assert "world 4" in out
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "200"
    assert checkpoint.saved_iterations(ckpt) == [150, 200]  # keep_last: 2
    assert (ckpt / "iter_0000200" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    state = torch.load(ckpt / "iter_0000200" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert {"model", "optimizer", "opt_param_scheduler", "rng_state", "iteration", "consumed_samples"} <= set(state)
    assert len(state["rng_state"]) == 4 and state["consumed_samples"] == 6400
    kinds = [e["event"] for e in read_events(run_dir)]
    assert kinds[0] == "started" and kinds[-1] == "completed" and kinds.count("checkpoint") == 4


def test_exact_resume_after_exit_signal(full_run, tmp_path):
    """Stopped by SIGTERM near iteration 100, resumed: bitwise equal to the unbroken run at 200."""
    run_dir = tmp_path / "run"
    proc = launch(run_dir, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not any(r["iteration"] >= 95 for r in metrics(run_dir)[-3:]):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)  # what srun does to `hpc-mm launch` when Slurm stops the job
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out  # a clean stop: workers saved and exited 0, so did torchrun
    assert "SignalException" not in out
    stopped = checkpoint.latest_iteration(run_dir / "checkpoints")
    assert stopped is not None and 95 <= stopped < 200, out
    signal_saves = [e for e in read_events(run_dir) if e["event"] == "checkpoint" and e["reason"] == "signal"]
    assert signal_saves and signal_saves[-1]["iteration"] == stopped or stopped % 50 == 0
    assert max(r["iteration"] for r in metrics(run_dir)) == stopped  # finished the iteration, then stopped
    assert any(e["event"] == "signal" for e in read_events(run_dir))

    proc = launch(run_dir)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert f"resumed from {run_dir / 'checkpoints'} at iteration {stopped}" in out
    a = torch.load(full_run[0] / "checkpoints/iter_0000200/mp_rank_00/model_optim_rng.pt", weights_only=False)
    b = torch.load(run_dir / "checkpoints/iter_0000200/mp_rank_00/model_optim_rng.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert a["opt_param_scheduler"] == b["opt_param_scheduler"]


def test_async_save_and_built_in_limits(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(
        run_dir,
        "--set",
        "gpt.train_iters=20",
        "--set",
        "gpt.lr_warmup_iters=5",
        "--set",
        "checkpoint.save_interval=5",
        "--set",
        "checkpoint.async_save=true",
        "--set",
        "checkpoint.keep_last=null",
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert checkpoint.saved_iterations(run_dir / "checkpoints") == [5, 10, 15, 20]
    assert checkpoint.load_latest(run_dir / "checkpoints")[0] == 20
    result = run_cli(
        "launch",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        tmp_path / "tp",
        *FOUR_PROCS,
        "--set",
        "gpt.tensor_model_parallel_size=2",
        "--set",
        "gpt.global_batch_size=16",
    )
    assert result.returncode != 0
    assert (
        "error: gpt.tensor_model_parallel_size: the built-in trainer's model is data-parallel only"
        in result.stdout + result.stderr
    )


def test_model_json_it_cannot_build_is_one_line(tmp_path):
    model = json.loads((JOBS / "tiny-vlm" / "model.json").read_text())
    del model["image_encoder"]["vision_encoder"]["image_size"]
    (tmp_path / "model.json").write_text(json.dumps(model))
    result = run_cli(
        "launch",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        tmp_path / "run",
        "--nodes",
        "1",
        "--nproc-per-node",
        "1",
        "--set",
        f"mm.model={tmp_path / 'model.json'}",
        "--set",
        "entry.launcher=srun",
        "--set",
        "gpt.global_batch_size=4",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: mm.model: the built-in trainer cannot build its model from" in result.stderr
    assert "Traceback" not in result.stderr
