"""Beyond preemption, on the real test cluster: a failed preflight, a crash that repeats, the chain
of jobs where requeue is not allowed, every end recorded. A hung rank, a dead node and a one-off crash
are recovered inside the allocation: test_inside.py."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fake_devices import gpu_node

from hpc_mm.launch.standby import stand_in
from hpc_mm.run.rundir import read_events

from conftest import JOBS, ROOT, run_cli
from test_slurm import preempt, sacct, wait_for

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"
TINY = JOBS / "tiny-vlm.yaml"


def submit(run_dir, *overrides, job=TINY):
    """One rank a node (the faults here are of nodes and steps: half the processes on a 2-core machine),
    unless the test says otherwise."""
    overrides = ("distributed.nproc_per_node=1", *overrides)
    result = run_cli(
        "submit",
        job,
        "--run-dir",
        run_dir,
        "--json",
        *[a for o in overrides for a in ("--set", o)],
        cwd=run_dir.parent,
        check=True,
    )
    return json.loads(result.stdout)["job_id"]


def until(predicate, timeout=300, poll=0.5, job_id=None):
    """Wait for `predicate`; a requeued job is let start at once (Slurm holds it back a while)."""
    deadline, pending_since = time.time() + timeout, None
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if job_id and sacct(job_id)[0] == "PENDING":
            pending_since = pending_since or time.time()
            if time.time() - pending_since > 3:  # (not within the second of the requeue: slurm/hold.py)
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        else:
            pending_since = None
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {predicate}")


def finished(job_id, timeout=600):
    until(
        lambda: sacct(job_id)[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"),
        timeout,
        poll=1,
        job_id=job_id,
    )
    return sacct(job_id)[0]


def metrics_rows(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def processes(node: str, training_only: bool = False, job_id: str | None = None) -> list[int]:
    """The processes of a job step on one (emulated) node, by their SLURMD_NODENAME (and SLURM_JOB_ID);
    `training_only`: the ranks."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            values = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"SLURMD_NODENAME={node}".encode() in values
            and (job_id is None or f"SLURM_JOB_ID={job_id}".encode() in values)
            and (not training_only or any(v.startswith(b"RANK=") for v in values))
        ):
            pid = int(environ.parent.name)
            if pid != os.getpid():
                # a rank run by a standby interpreter (launch/standby.py): the training process is the standby
                found.append((stand_in(pid) or pid) if training_only else pid)
    return found


def weights(run_dir, iteration):
    state = torch.load(
        run_dir / "checkpoints" / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False
    )
    return state["model"]


def restore(cluster, node: str) -> None:
    subprocess.run(cluster.slurmd(node), capture_output=True)
    for _ in range(30):
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout
        if state.strip().startswith("idle"):
            return
        time.sleep(1)


@pytest.fixture
def fake_gpu_nodes(tmp_path, slurm_cluster):
    """The cluster's first and fourth node have healthy (fake) GPUs, the third a GPU whose nvidia-smi
    counts uncorrectable ECC errors; the second has none."""
    root = tmp_path / "nodes"
    first, second, third, fourth = slurm_cluster.nodes
    for node in (first, fourth):
        gpu_node(root, node, devices=1)
    gpu_node(root, third, devices=1, uncorrected={0: 5})
    (root / second / "dev").mkdir(parents=True)
    return f"{root}/{{node}}"


def test_a_node_that_fails_the_preflight_is_left_out(slurm_cluster, tmp_path, fake_gpu_nodes):
    n1, n2, n3, n4 = slurm_cluster.nodes
    run_dir = tmp_path / "run"
    job_id = submit(
        run_dir,
        "gpt.train_iters=60",
        "distributed.device=cuda",
        "distributed.backend=gloo",
        f"env={{HPC_MM_DEVICE_ROOT: '{fake_gpu_nodes}', OMP_NUM_THREADS: '1'}}",
    )
    assert finished(job_id) == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    record = read_events(run_dir)
    failed = {n: lines for e in record if e["event"] == "preflight" for n, lines in e["failed"].items()}
    # the node without GPUs and the node with a sick one (as far as the starts reached them), never a healthy one
    assert set(failed) <= {n2, n3} and n2 in failed and f"{n2}: distributed.device" in failed[n2][0]
    if n3 in failed:
        assert failed[n3] == [
            f"{n3}: device.health: GPU 0: nvidia-smi: 5 uncorrectable ECC errors on {n3} "
            "(hint: the node is left out; its devices need a look)"
        ]
    first = [e["event"] for e in record if e["restart"] == 0]
    assert "started" not in first  # nothing trained before the preflight passed
    requeued = [e for e in record if e["event"] in ("requeued", "restarted")]
    assert {e["cause"] for e in requeued} == {"preflight"} and {n for e in requeued for n in e["exclude"]} == set(
        failed
    )
    started = next(e for e in record if e["event"] == "started")
    assert not {n2, n3} & set(started["hosts"]) and record[-1]["event"] == "completed"
    batch_log = next((run_dir / "logs").glob("*.batch.out")).read_text()
    assert f"hpc-mm preflight: error: {n2}: distributed.device: the job runs on cuda but node {n2} has no" in batch_log


def test_a_preflight_failure_on_every_node_fails_the_job(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "entry.script=no_such_entry.py", f"entry.workdir={tmp_path}")
    assert finished(job_id) == "FAILED"
    record = read_events(run_dir)
    assert record[-1]["event"] == "failed" and record[-1]["cause"] == "preflight"
    assert "the preflight failed on every node" in record[-1]["reason"] and "no_such_entry.py" in record[-1]["reason"]
    assert not any(e["event"] in ("started", "requeued") for e in record)
    batch_log = next((run_dir / "logs").glob("*.batch.out")).read_text()
    assert batch_log.count("hpc-mm preflight: error:") == 2  # one line per node


def crashing_standin(tmp_path, **knobs):
    data = json.loads((ROOT / "tests/fixtures/standin/data.json").read_text())
    data["dataset_param"].update(read_latency_ms=20, **knobs)
    (tmp_path / "data.json").write_text(json.dumps(data))
    return f"mm.data={tmp_path / 'data.json'}"


def test_a_crash_that_repeats_stops_the_job(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(
        run_dir,
        crashing_standin(tmp_path, crash_at_iteration=30),
        "gpt.train_iters=100",
        "checkpoint.save_interval=20",
        "requeue.on_failure=3",
        job=STANDIN,
    )
    assert finished(job_id) == "FAILED"
    record = read_events(run_dir)
    # the first crash starts the step again inside the job; the same crash again gives up
    assert [e["event"] for e in record if e["event"] in ("restarted", "requeued", "gave_up")] == [
        "restarted",
        "gave_up",
    ]
    gave_up = record[-1]
    assert gave_up["event"] == "gave_up" and "the same failure twice in a row" in gave_up["reason"]
    assert gave_up["restart"] == 1 and gave_up["failure"] == "a crash after iteration 29"
    exit_code = subprocess.run(
        ["sacct", "-a", "-j", job_id, "-X", "-n", "-P", "-o", "ExitCode"], capture_output=True, text=True
    ).stdout.split()[-1]
    assert exit_code == "3:0"
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["last_event"] == "gave_up"


def test_chain_mode_continues_a_preempted_job_as_a_new_job(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(
        run_dir,
        "requeue.mode=chain",
        "slurm.exclusive=true",
        "slurm.partition=low",
        "gpt.train_iters=200",
        "checkpoint.save_interval=1000",
    )
    until(lambda: metrics_rows(run_dir) >= 60)
    high = preempt()
    requeued = until(lambda: next((e for e in read_events(run_dir) if e["event"] == "requeued"), None))
    assert wait_for(high) == "COMPLETED"
    next_id = requeued["next_job_id"]
    assert next_id != job_id and requeued["cause"] == "preemption"
    assert finished(next_id) == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    record = read_events(run_dir)
    resumed = [e for e in record if e["event"] == "resumed"]
    saved = [e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    assert resumed and resumed[-1]["iteration"] == saved[0]["iteration"] and resumed[-1]["restart"] == 1
    assert resumed[-1]["job_id"] == next_id and record[-1]["event"] == "completed"
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["job_id"] == next_id and status["state"] == "COMPLETED" and status["last_iteration"] == 200


def test_every_end_is_recorded_and_a_stop_to_the_step_alone_is_no_completion(slurm_cluster, tmp_path):
    """scancel --signal=USR1 without --batch reaches the ranks, not the batch shell: the job is stopped
    and requeued as for any manual stop, never COMPLETED with training unfinished. Then a rank killed
    mid-training: the job fails, and the record says how."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "gpt.train_iters=300", "checkpoint.save_interval=1000", "requeue.max_restarts=1")
    until(lambda: metrics_rows(run_dir) >= 40)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # to the steps only
    requeued = until(
        lambda: next((e for e in read_events(run_dir) if e["event"] in ("requeued", "completed", "failed")), None)
    )
    assert requeued["event"] == "requeued" and requeued["cause"] == "signal", requeued
    until(lambda: metrics_rows(run_dir) >= 80, job_id=job_id)
    rank = until(
        lambda: processes(
            next(e for e in read_events(run_dir) if e["event"] == "started" and e["restart"] == 1)["hosts"][0],
            training_only=True,
        )
    )[0]
    os.kill(rank, signal.SIGKILL)
    assert finished(job_id) == "FAILED"
    last = read_events(run_dir)[-1]
    assert last["event"] == "failed" and last["cause"] == "crash" and last["restart"] == 1
    assert "not requeued (requeue.on_failure = 0)" in last["reason"] and "a crash after iteration" in last["reason"]
