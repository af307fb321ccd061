"""Day two on the real test cluster: the Python API drives a 2-node run (and a webhook hears how it
ended), a pipeline whose middle stage fails, a throttled sweep sampled with squeue."""

import json
import subprocess
import time

import pytest
from receiver import Receiver

from hpc_mm.run import notify
from hpc_mm.run.rundir import read_events

from conftest import JOBS, run_cli
from test_faults import finished

TINY = JOBS / "tiny-vlm.yaml"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_the_python_api_drives_a_two_node_run_and_the_webhook_hears_it_end(slurm_cluster, tmp_path, receiver):
    import hpc_mm

    job = hpc_mm.load_job(
        TINY,
        set={
            "gpt.train_iters": 40,
            "checkpoint.save_interval": 20,
            "distributed.nproc_per_node": 1,
            "notify.webhook": receiver.url,
            "throughput.peak_tflops": 1.0,
        },
        nodes=2,
    )
    run = hpc_mm.submit(job, tmp_path / "api")
    assert run.job_id and run.path == (tmp_path / "api").resolve()
    assert run.path in [r.path for r in hpc_mm.runs(tmp_path)]
    done = run.wait(timeout=600)
    assert done.state == "COMPLETED" and done.last_iteration == 40 and done.nodes == 2
    rows = run.metrics()
    assert rows[-1].iteration == 40 and [e.kind.value for e in run.events()][-1] == "completed"
    # tokens/s is the log lines' samples/s x the tokens a sample (the tiny model: 16 patches, BOS, 8 tokens)
    recent = [r.samples_per_second for r in rows if r.samples_per_second][-10:]
    assert done.tokens_per_second == pytest.approx(sum(recent) / len(recent) * 25)
    assert done.tokens_per_second_per_device == pytest.approx(done.tokens_per_second / 2)
    assert done.mfu is not None and 0 < done.mfu < 1
    shown = run_cli("status", run.path, check=True).stdout
    assert "tokens/s" in shown and "MFU" in shown
    # the terminal event reached the webhook from the batch script's finish
    [body] = [b for b in receiver.bodies if b["event"] == "completed"]
    assert body["job_id"] == run.job_id and body["iteration"] == 40 and body["log"].endswith(".batch.out")
    assert [d["ok"] for d in notify.delivered(run.path)] == [True]


def test_a_dead_webhook_does_not_hold_the_job_up(slurm_cluster, tmp_path):
    """A receiver that accepts the connection and never answers: the job ends, the failure is
    recorded, the delivery took no longer than notify.timeout_seconds."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        result = run_cli(
            "submit",
            JOBS / "tiny-vlm.yaml",
            "--run-dir",
            tmp_path / "run",
            "--json",
            *_sets(
                f"notify.webhook=http://127.0.0.1:{silent.getsockname()[1]}/hook",
                "gpt.train_iters=30",
                "distributed.nproc_per_node=1",
                "fault.preflight=false",
            ),
            "-N",
            "1",
            check=True,
        )
        job_id = json.loads(result.stdout)["job_id"]
        assert finished(job_id) == "COMPLETED"
    finally:
        silent.close()
    [said] = notify.delivered(tmp_path / "run")
    assert not said["ok"] and said["error"] == "timed out" and said["event"] == "completed"
    ended = [e for e in read_events(tmp_path / "run") if e["event"] == "completed"]
    assert ended  # finish recorded the end before it tried to deliver it


def _sets(*items):
    return [a for s in items for a in ("--set", s)]


def _stage(tmp_path, name, code):
    """A one-node command stage that exits with `code`."""
    script = tmp_path / f"{name}.py"
    script.write_text(f"import sys\nprint('stage {name}')\nsys.exit({code})\n")
    job = tmp_path / f"{name}.yaml"
    job.write_text(
        f"name: {name}\n"
        f"entry:\n  script: {script}\n  kind: command\n  launcher: srun\n"
        "slurm:\n  nodes: 1\n  time: '00:05:00'\n  cpus_per_task: 1\n"
        "fault:\n  preflight: false\n"
    )
    return job


def test_a_pipeline_whose_middle_stage_fails_cancels_the_last_and_says_why(slurm_cluster, tmp_path):
    stages = [_stage(tmp_path, "convert", 0), _stage(tmp_path, "train", 3), _stage(tmp_path, "export", 0)]
    result = run_cli("submit", *stages, "--json", cwd=tmp_path, check=True)
    submitted = json.loads(result.stdout)
    ids = [s["job_id"] for s in submitted]
    assert [s["after"] for s in submitted] == [[], [ids[0]], [ids[1]]]
    assert finished(ids[0]) == "COMPLETED"
    assert finished(ids[1]) == "FAILED"
    assert finished(ids[2]) == "CANCELLED"  # Slurm's --kill-on-invalid-dep, not left pending
    last = json.loads(run_cli("status", submitted[2]["run_dir"], "--json", cwd=tmp_path, check=True).stdout)
    assert last["state"] == "CANCELLED" and last["after"][0]["job_id"] == ids[1]
    assert last["outcome"].startswith(f"cancelled by Slurm before it started: job {ids[1]} (train-")
    assert last["outcome"].endswith("which it waited for, ended FAILED")
    text = run_cli("status", submitted[2]["run_dir"], cwd=tmp_path, check=True).stdout
    assert f"after: job {ids[1]}" in text and "FAILED" in text
    # a stage after a job that already failed is refused in one line
    late = run_cli("submit", stages[2], "--after", ids[1], cwd=tmp_path)
    assert late.returncode == 2 and f"job {ids[1]} ended FAILED" in late.stderr
    assert len(late.stderr.strip().splitlines()) == 1


def test_a_sweep_of_six_with_max_parallel_two_never_runs_more_than_two(slurm_cluster, tmp_path):
    result = run_cli(
        "submit",
        TINY,
        "-N",
        "1",
        "--json",
        "--max-parallel",
        "2",
        "--zip",
        "--sweep",
        "gpt.lr=1e-3,2e-3,3e-3,4e-3,5e-3,6e-3",
        "--sweep",
        "gpt.seed=1,2,3,4,5,6",
        "--run-dir",
        "runs/sweep",
        *_sets(
            "slurm.exclusive=true",  # without the throttle, four would run: one a node
            "distributed.nproc_per_node=1",
            "gpt.train_iters=30",
            "fault.preflight=false",
        ),
        cwd=tmp_path,
        check=True,
    )
    submitted = json.loads(result.stdout)
    array = submitted["job_id"]
    assert len(submitted["tasks"]) == 6
    most, seen = 0, set()
    deadline = time.time() + 600
    while time.time() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", array, "-o", "%i %T"], capture_output=True, text=True
        ).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        running = [j for j, s in states.items() if s == "RUNNING"]
        most = max(most, len(running))
        seen |= set(running)
        if not states:
            break
        time.sleep(0.5)
    assert most <= 2, most
    assert most == 2  # the throttle let two run side by side
    for task in submitted["tasks"]:
        assert finished(task["job_id"]) == "COMPLETED"
    script = (tmp_path / "runs" / "sweep" / "task-0" / "job.sbatch").read_text()
    assert "#SBATCH --array=0-5%2\n" in script
    report = run_cli("report", "runs/sweep", cwd=tmp_path, check=True).stdout.splitlines()
    losses = [float(line.split()[-2]) for line in report[1:7]]
    assert losses == sorted(losses)  # best first
    shown = run_cli("status", "runs/sweep", cwd=tmp_path, check=True).stdout
    best = [part.split()[0] for part in shown.split("best first: ")[1].split("; ")]
    assert best == [f"task-{line.split()[0]}" for line in report[1:7]]  # status ranks them as report does
