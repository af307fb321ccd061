"""Operating runs on the real test cluster and with real mpirun: the status table against
squeue/sacct, cancel, emulated preemption with `hpc-mm local`, and a sweep as a job array
whose one preempted task requeues on its own."""

import json
import re
import subprocess

import pytest
import torch

from hpc_mm.run.rundir import read_events

from conftest import JOBS, run_cli
from test_faults import finished, metrics_rows, until, weights
from test_slurm import preempt, sacct

TINY = JOBS / "tiny-vlm.yaml"


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def squeue(job_id):
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True).stdout
    return tuple(out.strip().split("|")) if out.strip() else (None, None)


def no_traceback(run_dir):
    for log in (run_dir / "logs").iterdir():
        assert "Traceback" not in log.read_text(errors="replace"), log


def test_status_table_matches_squeue_and_sacct_and_cancel_saves_first(slurm_cluster, tmp_path):
    """Three runs: one completed, one running, one pending (BeginTime); then the running one is cancelled."""
    done = json.loads(
        run_cli(
            "submit",
            TINY,
            "--run-dir",
            "runs/done",
            "--json",
            "--wait",
            "-N",
            "1",
            *sets("gpt.train_iters=30"),
            cwd=tmp_path,
            check=True,
        ).stdout
    )
    running = json.loads(
        run_cli(
            "submit",
            TINY,
            "--run-dir",
            "runs/running",
            "--json",
            "-p",
            "low",
            *sets("gpt.train_iters=100000", "checkpoint.save_interval=100000"),
            cwd=tmp_path,
            check=True,
        ).stdout
    )
    pending = json.loads(
        run_cli(
            "submit",
            TINY,
            "--run-dir",
            "runs/pending",
            "--json",
            *sets("slurm.extra_sbatch={begin: now+1hour}"),
            cwd=tmp_path,
            check=True,
        ).stdout
    )
    until(lambda: metrics_rows(tmp_path / "runs" / "running") >= 5)

    table = json.loads(run_cli("status", "--json", cwd=tmp_path, check=True).stdout)
    rows = {r["job_id"]: r for r in table}
    assert set(rows) == {done["job_id"], running["job_id"], pending["job_id"]}
    assert [r["job_id"] for r in table][0] == pending["job_id"]  # newest first
    assert (
        (rows[pending["job_id"]]["state"], rows[pending["job_id"]]["reason"])
        == squeue(pending["job_id"])
        == ("PENDING", "BeginTime")
    )
    assert rows[running["job_id"]]["state"] == squeue(running["job_id"])[0] == "RUNNING"
    assert rows[done["job_id"]]["state"] == sacct(done["job_id"])[0] == "COMPLETED"
    assert (rows[done["job_id"]]["nodes"], rows[done["job_id"]]["last_iteration"]) == (1, 30)
    live = rows[running["job_id"]]
    assert live["last_iteration"] >= 5 and live["eta_seconds"] > 0 and 0 < live["time_left_seconds"] <= 20 * 60

    human = run_cli("status", cwd=tmp_path, check=True).stdout
    assert "None" not in human and not re.search(r"\d\.\d{6,}", human)  # no Python Nones, no 17-digit floats
    lines = {line.split()[1]: line for line in human.splitlines()[1:]}
    assert "PENDING (BeginTime)" in lines[pending["job_id"]]
    assert "RUNNING" in lines[running["job_id"]] and "COMPLETED" in lines[done["job_id"]]
    assert " 30/30 " in lines[done["job_id"]]
    one = run_cli("status", running["job_id"], cwd=tmp_path, check=True).stdout
    assert "START" in one and "running" in one and "None" not in one

    # cancel: the job saves at the end of its iteration, records `cancelled`, no traceback anywhere
    run_dir = tmp_path / "runs" / "running"
    result = run_cli("cancel", running["job_id"], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    record = read_events(run_dir)
    saved = [e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    last_row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved and saved[-1]["iteration"] == last_row["iteration"]  # the iteration it stopped at
    assert record[-1]["event"] == "cancelled" and record[-1]["iteration"] == saved[-1]["iteration"]
    assert f"its last checkpoint is iteration {saved[-1]['iteration']}" in result.stdout
    assert finished(running["job_id"]) == "CANCELLED"
    assert not any(e["event"] == "requeued" for e in record)
    no_traceback(run_dir)
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["state"] == "CANCELLED" and status["last_checkpoint"] == saved[-1]["iteration"]

    # the pending one is cancelled at once (nothing to save)
    assert run_cli("cancel", "runs/pending", cwd=tmp_path, check=True).returncode == 0
    assert finished(pending["job_id"], timeout=60) == "CANCELLED"
    assert read_events(tmp_path / "runs" / "pending")[-1]["event"] == "cancelled"


def local(run_dir, *extra):
    return run_cli(
        "local", TINY, "--nodes", "2", "--nproc-per-node", "2", "--run-dir", run_dir, "--set", "gpt.train_iters=100",
        *extra, timeout=600,
    )  # fmt: skip


def test_local_preempt_at_resumes_bitwise_with_per_rank_logs(tmp_path):
    base = local(tmp_path / "base")
    assert base.returncode == 0, base.stdout + base.stderr
    result = local(tmp_path / "run", "--preempt-at", "40")
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "run"
    record = read_events(run_dir)
    requeued = [e for e in record if e["event"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["cause"] == "preemption" and requeued[0]["restart"] == 0
    signal_save = next(e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal")
    assert signal_save["iteration"] >= 40
    resumed = next(e for e in record if e["event"] == "resumed")
    assert (resumed["restart"], resumed["iteration"]) == (1, signal_save["iteration"])
    assert record[-1]["event"] == "completed" and record[-1]["restart"] == 1
    a, b = weights(tmp_path / "base", 100), weights(run_dir, 100)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise the uninterrupted run
    # progress (plain lines: not a terminal) and the summary show the restart
    assert "restarts 1" in result.stdout and "iteration 100/100" in result.stdout
    assert "iterations    100 of 100" in result.stdout
    assert f"restarts      1 (preemption -> resumed at {signal_save['iteration']})" in result.stdout

    report = run_cli("report", run_dir, check=True).stdout
    assert f"resumed at {signal_save['iteration']}" in report and (run_dir / "report.png").stat().st_size > 10_000
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["restarts"] == 1 and status["restart_cause"] == "preemption" and status["state"] == "COMPLETED"
    assert [s["ended"] for s in status["starts"]] == ["requeued", "completed"]

    logs = run_cli("logs", run_dir, "--rank", "3", check=True).stdout.splitlines()
    assert any(line.startswith("[rank 3] data-parallel rank 3/4") for line in logs), logs
    assert all(line.startswith("[rank 3]") or not line.startswith("[rank") for line in logs)
    first = run_cli("logs", run_dir, "--rank", "3", "--restart", "0", check=True).stdout
    assert f"[rank 3] exiting on signal after iteration {signal_save['iteration']}" in first


@pytest.mark.parametrize(
    "bad,message",
    [
        (["--preempt-at", "0"], "error: hpc-mm local: argument --preempt-at: 0 must be at least 1"),
        (["--preempt-at", "x"], "error: hpc-mm local: argument --preempt-at: 'x' is not an integer"),
    ],
)
def test_local_preempt_at_bad_values(tmp_path, bad, message):
    result = local(tmp_path / "run", *bad)
    assert result.returncode == 2 and result.stderr.startswith(message) and not (tmp_path / "run").exists()


def test_sweep_is_one_array_and_only_the_preempted_task_requeues(slurm_cluster, tmp_path):
    result = run_cli(
        "submit",
        TINY,
        "-N",
        "1",
        "--nproc-per-node",
        "1",
        "-p",
        "low",
        "--json",
        "--zip",
        "--sweep",
        "gpt.lr=1e-3,2e-3",
        "--sweep",
        "gpt.seed=1,2",
        "--run-dir",
        "runs/sweep",
        *sets("slurm.exclusive=true", "gpt.train_iters=400", "checkpoint.save_interval=1000"),
        cwd=tmp_path,
        check=True,
    )
    submitted = json.loads(result.stdout)
    array, tasks = submitted["job_id"], submitted["tasks"]
    assert [t["job_id"] for t in tasks] == [f"{array}_{i}" for i in range(2)]
    assert [t["values"] for t in tasks] == [{"gpt.lr": "1e-3", "gpt.seed": "1"}, {"gpt.lr": "2e-3", "gpt.seed": "2"}]
    dirs = [tmp_path / "runs" / "sweep" / f"task-{i}" for i in range(2)]
    until(lambda: all(metrics_rows(d) >= 10 for d in dirs), timeout=300)
    victim = dirs[1]
    node = next(e for e in read_events(victim) if e["event"] == "started")["hosts"][0]
    high = preempt(nodes=1, hold=3, nodelist=node)
    until(lambda: any(e["event"] == "requeued" for e in read_events(victim)), timeout=120)
    finished(high, timeout=120)
    # while the requeued task waits, status already counts the restart and says why
    waiting = json.loads(run_cli("status", tasks[1]["job_id"], "--json", cwd=tmp_path, check=True).stdout)
    assert waiting["restarts"] == 1 and waiting["restart_cause"] in ("preemption", "slurm")
    for task in tasks:
        assert finished(task["job_id"], timeout=600) == "COMPLETED", task
    for i, run_dir in enumerate(dirs):
        record = read_events(run_dir)
        requeues = [e for e in record if e["event"] == "requeued"]
        assert len(requeues) == (1 if i == 1 else 0), (i, [e["event"] for e in record])
        assert all(e.get("job_id") in (tasks[i]["job_id"], None) for e in record)
        assert record[-1]["event"] == "completed"
        job = (run_dir / "job.yaml").read_text()
        lr, seed = tasks[i]["values"]["gpt.lr"], tasks[i]["values"]["gpt.seed"]
        assert f"  lr: {float(lr)}\n" in job and f"  seed: {seed}\n" in job
        assert json.loads((run_dir / "run.json").read_text())["values"] == tasks[i]["values"]
    resumed = next(e for e in read_events(victim) if e["event"] == "resumed")
    assert resumed["restart"] == 1
    table = run_cli("status", "runs/sweep", cwd=tmp_path, check=True).stdout
    assert f"{array} " in table and "2 COMPLETED" in table and "task-1 lr=2e-3 seed=2" in table
    restarts = {r["job_id"]: r["restarts"] for r in json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)}
    assert restarts == {t["job_id"]: int(t["job_id"] == tasks[1]["job_id"]) for t in tasks}
