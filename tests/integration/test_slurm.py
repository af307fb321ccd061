"""The real Slurm test cluster (scripts/slurm-testbed): env, submit, plain sbatch, dry-run, preemption."""

import json
import re
import subprocess
import time

from receiver import Receiver

from hpc_mm.run.rundir import read_events

from conftest import HPC_MM, JOBS, run_cli


def sacct(job_id: str) -> tuple[str, int]:
    out = (
        subprocess.run(
            ["sacct", "-a", "-j", job_id, "-X", "-n", "-P", "-o", "State,NNodes"], capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()
    )
    if not out:  # not in the accounting database yet (slurmdbd lags the controller): ask the controller
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
        state, nodes = re.search(r"JobState=(\S+)", shown), re.search(r"NumNodes=(\d+)", shown)
        return (state[1] if state else "UNKNOWN"), int(nodes[1]) if nodes else 0
    state, nodes = out[-1].split("|")
    return state.split()[0], int(nodes)


def wait_for(job_id: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state, _ = sacct(job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {state} after {timeout} s")


def preempt(nodes: int = 4, hold: int = 2, nodelist: str | None = None) -> str:
    """A real preemption: an exclusive job in partition `high` on `nodes` nodes for `hold` seconds."""
    where = ["-w", nodelist] if nodelist else []
    return subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "high",
            "--exclusive",
            "-N",
            str(nodes),
            *where,
            "-o",
            "/dev/null",
            "--wrap",
            f"sleep {hold}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def preempt_and_resume(job_id: str, run_dir, hold: int = 2) -> None:
    """Preempt every node, wait until the run has requeued and the preempting job has ended,
    then let the requeued job start at once (Slurm holds requeued jobs back a while: BeginTime)."""
    high = preempt(hold=hold)
    deadline = time.time() + 300
    while time.time() < deadline and not any(e["event"] == "requeued" for e in read_events(run_dir)):
        time.sleep(1)
    assert wait_for(high) == "COMPLETED"
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


def test_srun_env_ranks(slurm_cluster):
    result = subprocess.run(
        ["srun", "-N", "4", "--ntasks-per-node", "2", *HPC_MM, "env", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in rows) == list(range(8))
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", rows[0]["hosts"] and ",".join(rows[0]["hosts"])],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(r["hosts"] == hosts for r in rows) and len(hosts) == 4
    for r in rows:
        assert r["world_size"] == 8 and r["nnodes"] == 4 and r["launcher"] == "slurm"
        assert r["node"] == hosts[r["node_rank"]]  # node ranks follow the step's host order
        assert r["local_rank"] == r["rank"] % 2 and r["node_rank"] == r["rank"] // 2
    rank0 = next(r for r in rows if r["rank"] == 0)
    assert {r["master_addr"] for r in rows} == {rank0["node"]}
    assert len({r["master_port"] for r in rows}) == 1


def test_submit_wait_completes_on_two_nodes(slurm_cluster, tmp_path):
    result = run_cli(
        "submit", JOBS / "tiny-vlm.yaml", "--nodes", "2", "--set", "gpt.train_iters=100", "--wait", cwd=tmp_path,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.split("submitted job ")[1].split()[0]
    assert sacct(job_id) == ("COMPLETED", 2)
    [status] = json.loads(run_cli("status", "--json", cwd=tmp_path, check=True).stdout)  # the table: one run
    assert status["job_id"] == job_id and status["state"] == "COMPLETED"
    assert status["last_iteration"] == 100 and status["last_checkpoint"] == 100 and status["nodes"] == 2
    logs = run_cli("logs", job_id, "--rank", "0", cwd=tmp_path, check=True).stdout
    assert "iteration      100/     100" in logs
    # rank 0's own lines and its task's unprefixed ones (the launcher's, a traceback), no other rank's
    assert all(line.startswith("[rank 0]") or not line.startswith("[rank") for line in logs.splitlines())


def test_rendered_script_with_plain_sbatch(slurm_cluster, hostile_tmp):
    run_dir = hostile_tmp / "run"
    script = hostile_tmp / "job.sbatch"
    run_cli(
        "render",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        run_dir,
        "-o",
        script,
        "--set",
        "gpt.train_iters=60",
        "--set",
        "checkpoint.save_interval=30",
        check=True,
    )
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=hostile_tmp)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().split(";")[0]
    assert json.loads(run_cli("status", run_dir, "--json", check=True).stdout)["job_id"] == job_id
    assert wait_for(job_id) == "COMPLETED", (run_dir / "logs").iterdir()
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "60"
    assert any(p.name.endswith(".batch.out") for p in (run_dir / "logs").iterdir())
    assert [e["event"] for e in read_events(run_dir)][-1] == "completed"
    # A plain-sbatch run is first-class: its script and job id are in the run directory.
    assert (run_dir / "job.sbatch").read_text() == script.read_text()
    assert json.loads((run_dir / "run.json").read_text())["job_id"] == job_id
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert (status["state"], status["last_iteration"]) == ("COMPLETED", 60)
    assert "iteration       60/      60" in run_cli("logs", run_dir, "--rank", "0", check=True).stdout


def test_cancel_a_queued_plain_sbatch_run_by_its_directory(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "-o", tmp_path / "job.sbatch", check=True)
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--hold", str(tmp_path / "job.sbatch")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert json.loads(run_cli("status", run_dir, "--json", check=True).stdout)["job_id"] == job_id
    result = run_cli("cancel", run_dir)
    assert result.returncode == 0 and f"cancelled job {job_id}" in result.stdout, result.stderr
    assert wait_for(job_id, timeout=60) == "CANCELLED"


def test_refused_submission_leaves_no_run_directory(slurm_cluster, tmp_path):
    result = run_cli("submit", JOBS / "tiny-vlm.yaml", "--set", "slurm.partition=nosuch", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: slurm.partition: Slurm refused the job")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dry_run_reports_bad_partition_without_submitting(slurm_cluster, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    result = run_cli("submit", JOBS / "tiny-vlm.yaml", "--dry-run", "--set", "slurm.partition=nosuch", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: slurm.partition: Slurm refused the job") and "partition" in result.stderr
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
    assert not (tmp_path / "runs").exists()
    ok = run_cli("submit", JOBS / "tiny-vlm.yaml", "--dry-run", cwd=tmp_path, check=True)
    assert "sbatch --test-only: sbatch: Job" in ok.stdout and "#SBATCH --nodes=2" in ok.stdout


def test_preempted_job_saves_requeues_and_resumes(slurm_cluster, tmp_path):
    """Real preemption: a `high` job needs the nodes; ours saves, requeues, resumes, finishes; a
    webhook hears of the requeue and of the end."""
    receiver = Receiver()
    result = run_cli(
        "submit",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        tmp_path / "run",
        "--json",
        "--set",
        "slurm.exclusive=true",
        "--set",
        "slurm.partition=low",
        "--set",
        "gpt.train_iters=300",
        "--set",
        "distributed.nproc_per_node=1",
        "--set",
        "checkpoint.save_interval=1000",
        "--set",
        f"notify.webhook={receiver.url}",
        "--set",
        "notify.on=[requeued, completed]",
        cwd=tmp_path,
        check=True,
    )
    job_id = json.loads(result.stdout)["job_id"]
    run_dir = tmp_path / "run"
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(1)
    time.sleep(4)
    preempt_and_resume(job_id, run_dir, hold=3)
    assert wait_for(job_id, timeout=600) == "COMPLETED"
    record = read_events(run_dir)
    kinds = [e["event"] for e in record]
    assert "signal" in kinds and "requeued" in kinds, kinds
    # hpc-mm finish requeues it (cause: preemption), unless Slurm's own preemption requeue
    # ended the batch shell first; then the next start records it (cause: slurm).
    assert next(e for e in record if e["event"] == "requeued")["cause"] in ("preemption", "slurm")
    saved = [e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    resumed = [e for e in record if e["event"] == "resumed"]
    assert saved and resumed and resumed[0]["iteration"] == saved[0]["iteration"] and resumed[0]["restart"] == 1
    assert kinds[-1] == "completed" and record[-1]["restart"] == 1
    status = json.loads(run_cli("status", str(run_dir), "--json", check=True).stdout)
    assert status["last_iteration"] == 300 and status["restarts"] == 1
    assert run_cli("logs", str(run_dir), "--restart", "0", check=True).stdout.count("resumed from") == 0
    assert "resumed from" in run_cli("logs", str(run_dir), "--restart", "1", check=True).stdout
    receiver.close()
    heard = [(b["event"], b["job_id"], b["restart"]) for b in receiver.bodies]
    assert heard == [("requeued", job_id, 0), ("completed", job_id, 1)], heard
    assert receiver.bodies[0]["cause"] in ("preemption", "slurm") and receiver.bodies[1]["iteration"] == 300
    # the built-in trainer writes no TensorBoard events: node 0's launcher wrote its metrics, one file a
    # start, and TensorBoard's own reader sees one run, each step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("loss")] == list(range(1, 301))


def test_time_limit_saves_requeues_and_finishes(slurm_cluster, tmp_path):
    """A 2-minute time limit with the signal 30 s before it: the job saves, requeues, resumes, finishes.

    Slurm sends the time-limit signal up to 60 s early, so the first start trains 20-80 s. The
    data reads cost 25 ms a sample (8 samples per rank and step: at most 5 iterations/s on any
    machine), so 500 iterations never fit in the first start. Once the job is requeued, the test
    gives it a longer limit so that it finishes in the next start."""
    data = json.loads((JOBS / "tiny-vlm" / "data.json").read_text())
    data["dataset_param"]["read_latency_ms"] = 25
    (tmp_path / "data.json").write_text(json.dumps(data))
    run_dir = tmp_path / "run"
    result = run_cli(
        "submit",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        run_dir,
        "--json",
        "--set",
        "slurm.time=2",
        "--set",
        "requeue.grace_seconds=30",
        "--set",
        "requeue.max_restarts=5",
        "--set",
        f"mm.data={tmp_path / 'data.json'}",
        "--set",
        "gpt.train_iters=500",
        "--set",
        "checkpoint.save_interval=1000",
        cwd=tmp_path,
        check=True,
    )
    job_id = json.loads(result.stdout)["job_id"]
    deadline = time.time() + 600
    extended = False
    while time.time() < deadline:
        state, _ = sacct(job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        if not extended and any(e["event"] == "requeued" for e in read_events(run_dir)):
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=20"], capture_output=True)
            extended = True
        if state == "PENDING":  # Slurm holds requeued jobs back a while (BeginTime)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        time.sleep(2)
    assert state == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    record = read_events(run_dir)
    requeued = [e for e in record if e["event"] == "requeued"]
    assert requeued and all(e["cause"] == "time-limit" for e in requeued)
    resumed = [e for e in record if e["event"] == "resumed"]
    assert [e["restart"] for e in resumed] == list(range(1, len(requeued) + 1))
    signal_saves = [e["iteration"] for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    assert [e["iteration"] for e in resumed] == signal_saves  # each restart resumed where the last one saved
    assert [e["iteration"] for e in requeued] == signal_saves
    assert record[-1]["event"] == "completed"
    assert json.loads(run_cli("status", str(run_dir), "--json", check=True).stdout)["last_iteration"] == 500


def test_cancel_of_a_job_that_does_not_exist_is_an_error(slurm_cluster):
    result = run_cli("cancel", "999999")
    assert result.returncode == 2 and result.stderr.startswith("error: JOB_ID: Slurm knows no job 999999")
