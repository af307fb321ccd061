"""The external-entry path: a stand-in for MindSpeed-MM's pretrain_vlm.py with Megatron's contract
(tests/fixtures/pretrain_vlm.py), submitted to the real test cluster from pretrained weights,
preempted, requeued, resumed from its own checkpoint; and the checks made on a node before any
training starts."""

import json
import re
import time

import torch

from hpc_mm.run.rundir import read_events

from conftest import JOBS, ROOT, run_cli
from test_slurm import preempt_and_resume, wait_for

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"


def pretrained_weights(folder, value: float):
    """Converted weights as MindSpeed-MM's converters leave them: a `release` checkpoint."""
    path = folder / "release" / "mp_rank_00" / "model_optim_rng.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {"weight": torch.full((1, 16), value)}, "iteration": 0}, path)
    (folder / "latest_checkpointed_iteration.txt").write_text("release")
    return folder


def test_standin_entry_from_pretrained_weights_survives_preemption(slurm_cluster, tmp_path):
    pretrained = pretrained_weights(tmp_path / "pretrained", 0.5)
    run_dir = tmp_path / "run"
    result = run_cli(
        "submit",
        STANDIN,
        "--run-dir",
        run_dir,
        "--json",
        "--set",
        f"checkpoint.pretrained={pretrained}",
        "--set",
        "slurm.exclusive=true",
        "--set",
        "slurm.partition=low",
        cwd=tmp_path,
        check=True,
    )
    job_id = json.loads(result.stdout)["job_id"]
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and len((run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else [])
        < 20
    ):
        time.sleep(0.5)
    preempt_and_resume(job_id, run_dir)
    assert wait_for(job_id, timeout=600) == "COMPLETED", [e["event"] for e in read_events(run_dir)]

    record = read_events(run_dir)
    resumed = [e for e in record if e["event"] == "resumed"]
    saved = [e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    # First start: the pretrained weights, as fine-tuning (iteration 0); the requeued start: its own checkpoint.
    assert (resumed[0]["source"], resumed[0]["iteration"], resumed[0]["restart"]) == ("pretrained", 0, 0)
    assert saved and (resumed[1]["source"], resumed[1]["restart"]) == ("run", 1)
    assert resumed[1]["iteration"] == saved[0]["iteration"] and resumed[1]["path"] == str(run_dir / "checkpoints")
    assert [e for e in record if e["event"] == "requeued"][0]["cause"] in ("preemption", "slurm")
    assert record[-1]["event"] == "completed" and record[-1]["restart"] == 1
    first_start = run_cli("logs", run_dir, "--restart", "0", check=True).stdout
    assert "model weight sum: 8.000000" in first_start  # 16 weights of 0.5, not a random start

    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["state"] == "COMPLETED" and status["last_iteration"] == 300 and status["last_checkpoint"] == 300
    assert isinstance(status["last_loss"], float) and status["restarts"] == 1
    report = run_cli("report", run_dir, check=True)
    assert (
        "iterations    300 of 300" in report.stdout
        and "restarts      1 (" in report.stdout
        and (run_dir / "report.png").stat().st_size > 1000
    )
    rank1 = run_cli("logs", run_dir, "--rank", "1", "--restart", "0", check=True).stdout
    assert "rank 1: 4 ranks, data parallel, starting at iteration 0" in rank1
    assert not re.search(r"^\[default0\]", rank1, re.M) and "rank 2:" not in rank1


def fake_npu_node(tmp_path):
    dev = tmp_path / "node" / "dev"
    dev.mkdir(parents=True)
    for name in ["davinci0", "davinci1", "davinci_manager"]:
        (dev / name).touch()
    return {"HPC_MM_DEVICE_ROOT": str(tmp_path / "node")}


def test_npu_job_without_torch_npu_stops_before_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "launch",
        STANDIN,
        "--run-dir",
        run_dir,
        "--nodes",
        "1",
        "--set",
        "slurm.gres=npu:2",
        "--set",
        "distributed.nproc_per_node=auto",
        "--set",
        "gpt.global_batch_size=null",
        env=fake_npu_node(tmp_path),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(
        r"^error: entry\.python: \S+python\S* on \S+ cannot import torch_npu, which this job needs", result.stderr, re.M
    ), result.stderr
    assert "torch.distributed.run" not in result.stderr and not (run_dir / "events.jsonl").exists()


def test_npu_job_on_a_node_without_npus_is_one_error(tmp_path):
    result = run_cli(
        "launch",
        JOBS / "qwen2vl-7b.yaml",
        "--run-dir",
        tmp_path / "run",
        "--nodes",
        "1",
        "--set",
        f"entry.workdir={tmp_path}",
        env={"HPC_MM_DEVICE_ROOT": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: distributed.device: the job runs on npu but node"), result.stderr


def test_the_standins_parser_refuses_what_megatron_refuses(tmp_path):
    result = run_cli(
        "launch",
        STANDIN,
        "--run-dir",
        tmp_path / "run",
        "--nodes",
        "1",
        "--nproc-per-node",
        "1",
        "--set",
        "gpt.global_batch_size=4",
        "--set",
        "entry.extra_args=[--no-such-megatron-option]",
    )
    assert result.returncode != 0 and "unrecognized arguments: --no-such-megatron-option" in result.stderr
