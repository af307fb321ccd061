"""Recovery inside the allocation, on the real test cluster: a crash, a hung rank and a dead node
each start the step again inside the same job (Slurm's Restarts stays 0), the blamed node replaced
by a spare, and the run ends bitwise equal to an uninterrupted one; a restart inside keeps its nodes
where a requeue waits behind a competing job; a requeue survives a controller that is away; the
preflight blames no healthy node under load; a save that does not fit the grace time is warned of."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from fake_devices import gpu_node, npu_node

from hpc_mm.job.jobfile import load_job
from hpc_mm.launch.finish import preflight_failures
from hpc_mm.run import layout
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir, read_events

from conftest import JOBS, run_cli
from test_faults import finished, metrics_rows, processes, restore, submit, until, weights
from test_slurm import sacct

TINY = JOBS / "tiny-vlm.yaml"
JOB = [
    "gpt.train_iters=120",
    "checkpoint.save_interval=40",
    "fault.hang_floor_step=20",
    "fault.hang_floor_startup=120",
    "slurm.partition=low",
]
INSIDE = ["slurm.spare_nodes=1", "requeue.on_failure=2"]
ENDS = ("restarted", "requeued", "failed", "gave_up", "completed", "cancelled")


def slurm_restarts(job_id: str) -> int:
    """Slurm's own count of the job's requeues."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return int(re.search(r"\bRestarts=(\d+)", out)[1])


def allocation(job_id: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    nodelist = re.search(r"\bNodeList=(\S+)", out)[1]
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True).stdout.split()


def ranks(node: str, job_id: str) -> list[int]:
    """The training processes of job `job_id` on one (emulated) node."""
    return processes(node, training_only=True, job_id=job_id)


def step_processes(node: str, job_id: str) -> list[int]:
    """Every process of job `job_id`'s steps on one node (what dies with the node)."""
    return processes(node, job_id=job_id)


def queue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or sacct(job_id)[0]


def started(run_dir, restart):
    return next((e for e in read_events(run_dir) if e["event"] == "started" and e["restart"] == restart), None)


def ends(run_dir):
    return [e for e in read_events(run_dir) if e["event"] in ENDS]


def rows_after(run_dir, count):
    return lambda: metrics_rows(run_dir) >= count


def same_weights(a_dir, b_dir, iteration):
    a, b = weights(a_dir, iteration), weights(b_dir, iteration)
    return all(torch.equal(a[k], b[k]) for k in a)


def pools_ready(run_dir, job_id, nodes):
    """Every one of `nodes` holds its standby interpreters, ready (launch/standby.py)."""
    pools = {p["node"]: p for p in RunDir(run_dir).standby_states(job_id)}
    return all(n in pools and pools[n]["ready"] >= 2 for n in nodes)


def test_a_crash_a_hang_and_a_dead_node_are_recovered_inside_the_job_on_its_spare(slurm_cluster, tmp_path):
    # long enough for the standbys to be ready before each fault (they fill a second after a start here;
    # 400 iterations were done before the hang was injected once, on a loaded machine)
    JOB = [*globals()["JOB"], "gpt.train_iters=800", "env.HPC_MM_STANDBY_REFILL_AFTER='1'"]
    baseline = tmp_path / "baseline"
    base_job = submit(baseline, *JOB)  # uninterrupted, alongside
    run_dir = tmp_path / "run"
    heard = tmp_path / "notified.jsonl"  # a notify command: the watchdog's hang and finish's ends reach it
    told = (f"notify.command='cat >> {heard}; echo >> {heard}'", "notify.on=[hang, restarted, completed]")
    job_id = submit(run_dir, *JOB, *INSIDE, *told)
    until(rows_after(run_dir, 45))
    nodes = allocation(job_id)
    first = started(run_dir, 0)
    assert len(nodes) == 3 and len(first["hosts"]) == 2  # 2 train, 1 spare
    until(lambda: pools_ready(run_dir, job_id, nodes), timeout=180)  # so that each restart below is warm
    # 1. a rank crashes: the step starts again inside the job, on the same nodes (no node to blame)
    os.kill(until(lambda: ranks(first["hosts"][1], job_id))[0], signal.SIGKILL)
    crash = until(lambda: (ends(run_dir) or [None])[0], timeout=120)
    assert (crash["event"], crash["cause"], crash["exclude"], crash["job_id"]) == ("restarted", "crash", [], job_id)
    second = until(lambda: started(run_dir, 1), timeout=180)
    assert sorted(second["hosts"]) == sorted(first["hosts"])
    # 2. a rank stops (SIGSTOP): the watchdog finds the hang; its node is left out, the spare joins
    until(rows_after(run_dir, metrics_rows(run_dir) + 15))
    until(lambda: pools_ready(run_dir, job_id, nodes), timeout=180)
    hung_node = second["hosts"][1]
    stopped = until(lambda: ranks(hung_node, job_id))[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        hang = until(lambda: next((e for e in ends(run_dir)[1:]), None), timeout=180)
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert (hang["event"], hang["cause"], hang["exclude"]) == ("restarted", "hang", [hung_node]), hang
    third = until(lambda: started(run_dir, 2), timeout=180)
    spare = next(n for n in nodes if n not in first["hosts"])
    assert hung_node not in third["hosts"] and spare in third["hosts"]
    assert finished(job_id) == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    assert finished(base_job) == "COMPLETED"
    record = read_events(run_dir)
    assert slurm_restarts(job_id) == 0 and not any(e["event"] == "requeued" for e in record)
    assert {e["job_id"] for e in record if e["event"] == "started"} == {job_id}
    assert [e["event"] for e in ends(run_dir)] == ["restarted", "restarted", "completed"]
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["state"] == "COMPLETED" and status["last_iteration"] == 800
    assert same_weights(baseline, run_dir, 800)  # bitwise the uninterrupted run
    bodies = [json.loads(line) for line in heard.read_text().splitlines() if line.strip()]
    assert [b["event"] for b in bodies] == ["restarted", "hang", "restarted", "completed"], bodies
    assert [b["cause"] for b in bodies if b["event"] == "restarted"] == ["crash", "hang"]
    assert all(b["job_id"] == job_id for b in bodies)
    # both restarts were warm: every node's torchrun and rank ran in a standby interpreter (none cold)
    pools = {p["node"]: p for p in RunDir(run_dir).standby_states(job_id)}
    warm = {n: pools[n]["handed_out"] for n in pools}
    assert warm[first["hosts"][0]] == 4 and warm[first["hosts"][1]] == 2 and warm[spare] == 2, warm
    assert not any("cold start" in p.read_text() for p in (run_dir / "logs").glob("*-r[12]-t*.out"))
    # and nothing of the job is left on any node: standbys, their pools, the steps
    gone = until(lambda: not any(step_processes(n, job_id) for n in nodes) or None, timeout=60)
    assert gone

    # 3. a node dies (its slurmd and every process of the job there): the spare replaces it
    dead_dir = tmp_path / "dead"
    dead_job = submit(dead_dir, *JOB, *INSIDE)
    until(rows_after(dead_dir, 45))
    dead = started(dead_dir, 0)["hosts"][1]
    try:
        subprocess.run(["pkill", "-9", "-f", f"^{' '.join(slurm_cluster.slurmd(dead))}$"], check=False)
        for pid in step_processes(dead, dead_job):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ended = until(lambda: (ends(dead_dir) or [None])[0], timeout=120)
        assert (ended["event"], ended["cause"], ended["exclude"]) == ("restarted", "node-failure", [dead]), ended
        again = until(lambda: started(dead_dir, 1), timeout=180)
        assert dead not in again["hosts"] and len(again["hosts"]) == 2
    finally:
        restore(slurm_cluster, dead)
    assert finished(dead_job) == "COMPLETED", [e["event"] for e in read_events(dead_dir)]
    assert slurm_restarts(dead_job) == 0
    assert same_weights(baseline, dead_dir, 800)


def test_a_restart_inside_keeps_its_nodes_where_a_requeue_waits_behind_a_competing_job(slurm_cluster, tmp_path):
    job = [*JOB, "slurm.exclusive=true", "requeue.on_failure=1", "gpt.train_iters=300"]  # both still train when killed
    inside_dir, requeue_dir = tmp_path / "inside", tmp_path / "requeue"
    inside = submit(inside_dir, *job)
    requeued = submit(requeue_dir, *job, "requeue.inside=false")
    until(lambda: metrics_rows(inside_dir) >= 30 and metrics_rows(requeue_dir) >= 30)
    # a job of somebody else's, with a higher priority, waits for two whole nodes: all four are busy
    competitor = subprocess.run(
        ["sbatch", "--parsable", "-p", "low", "--exclusive", "-N", "2", "-o", "/dev/null", "--wrap", "sleep 15"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["scontrol", "update", f"JobId={competitor}", "Priority=4294967000"], check=True)
    assert queue_state(competitor) == "PENDING"
    for run_dir, job_id in ((inside_dir, inside), (requeue_dir, requeued)):
        os.kill(until(lambda r=run_dir, j=job_id: ranks(started(r, 0)["hosts"][0], j))[0], signal.SIGKILL)
    assert until(lambda: (ends(inside_dir) or [None])[0], timeout=120)["event"] == "restarted"
    assert until(lambda: (ends(requeue_dir) or [None])[0], timeout=120)["event"] == "requeued"
    assert finished(inside) == "COMPLETED" and finished(requeued) == "COMPLETED"
    assert finished(competitor) == "COMPLETED"
    start = subprocess.run(
        ["sacct", "-a", "-j", competitor, "-X", "-n", "-P", "-o", "Start"], capture_output=True, text=True
    ).stdout.split()[0]
    began = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
    inside_again, requeue_again = started(inside_dir, 1), started(requeue_dir, 1)
    # the restart inside did not wait for anyone: same job, never pending again
    assert inside_again["job_id"] == inside and slurm_restarts(inside) == 0
    # the requeued job left its nodes: the competitor took them, and it started again only after
    assert slurm_restarts(requeued) == 1 and requeue_again["time"] >= began
    assert inside_again["time"] < requeue_again["time"]


def finishing(run_dir) -> bool:
    """Is the batch script's `hpc-mm finish` for this run running?"""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"finish" in args and str(run_dir).encode() in args:
            return True
    return False


def test_a_requeue_waits_for_a_controller_that_is_away(slurm_cluster, tmp_path):
    """slurmctld stopped (SIGSTOP: it holds its connections and answers nothing) for 20 s from the
    moment `finish` starts: the requeue is asked again until it answers, then done, once."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, *JOB, "gpt.train_iters=60", "requeue.inside=false", "requeue.on_failure=1")
    until(rows_after(run_dir, 25))
    rank = until(lambda: ranks(started(run_dir, 0)["hosts"][1], job_id))[0]
    ctld = subprocess.run(
        ["pgrep", "-f", f"^/usr/sbin/slurmctld -f {slurm_cluster.conf}$"], capture_output=True, text=True
    ).stdout.split()
    assert len(ctld) == 1
    os.kill(rank, signal.SIGKILL)
    until(lambda: finishing(run_dir), timeout=120, poll=0.02)
    os.kill(int(ctld[0]), signal.SIGSTOP)
    try:
        time.sleep(20)
        assert not ends(run_dir)  # the requeue waits: no event yet
    finally:
        os.kill(int(ctld[0]), signal.SIGCONT)
    assert finished(job_id) == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    record = read_events(run_dir)
    assert [e["event"] for e in ends(run_dir)] == ["requeued", "completed"]
    assert record[-1]["event"] == "completed" and slurm_restarts(job_id) == 1
    batch_log = next((run_dir / "logs").glob("*.batch.out")).read_text()
    assert "Slurm's controller did not answer" in batch_log and "Traceback" not in batch_log


def test_a_hundred_preflights_under_load_blame_no_node(slurm_cluster, tmp_path):
    """Healthy (fake) NPUs and GPUs on every node, their tools asked at each preflight (npu-smi health,
    ECC and the chip map, hccn_tool's links; nvidia-smi): a busy node is never blamed."""
    root = tmp_path / "devices"
    for node in slurm_cluster.nodes:
        npu_node(root / "npu", node, devices=2)
        gpu_node(root / "cuda", node, devices=2)
    stand_ins = tmp_path / "stand-ins" / "torch_npu"  # the interpreter check asks for torch_npu on NPUs
    stand_ins.mkdir(parents=True)
    (stand_ins / "__init__.py").write_text("")
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for nodes, launcher, device in ((2, "torchrun", "npu"), (2, "srun", "cuda"), (4, "torchrun", "cuda"),
                                        (4, "srun", "npu")):  # fmt: skip
            run_dir = tmp_path / f"{launcher}-{nodes}"
            spec = load_job(
                TINY,
                [
                    f"slurm.nodes={nodes}",
                    "distributed.nproc_per_node=1",
                    f"entry.launcher={launcher}",
                    f"distributed.device={device}",
                    "distributed.backend=gloo",
                ],
            )
            layout.create(layout.plan_run(spec, run_dir))
            # 25 starts' preflights in one process a node (what `hpc-mm preflight` runs, without paying
            # for the interpreter 25 times): each start listens and connects on a port of its own
            loop = (
                "import os, sys\nfrom hpc_mm.launch.preflight import run_checks\n"
                "for i in range(25):\n    os.environ['HPC_MM_RESTART'] = str(i)\n    run_checks(sys.argv[1])\n"
            )
            result = subprocess.run(
                [
                    "srun",
                    "-p",
                    "low",
                    "-N",
                    str(nodes),
                    "--ntasks-per-node=1",
                    sys.executable,
                    "-c",
                    loop,
                    str(run_dir),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                env={
                    **os.environ,
                    "HPC_MM_DEVICE_ROOT": f"{root / device}/{{node}}",
                    "PYTHONPATH": str(stand_ins.parent),
                },
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            assert "device health not checked" not in result.stdout  # the tools were asked every time
            run = RunDir(run_dir)
            results = [p for p in (run_dir / layout.PREFLIGHT).glob("*-*.json") if not p.name.startswith("interpreter")]
            job_ids = {p.name.split("-")[0] for p in results}
            assert len(job_ids) == 1
            job_id = job_ids.pop()
            allocated = sorted({r.node for r in run.preflight_results(StartKey(job_id, 0)).values()})
            assert len(allocated) == nodes
            for restart in range(25):
                key = StartKey(job_id, restart)
                assert len(run.preflight_results(key)) == nodes, (launcher, nodes, restart)
                assert preflight_failures(run, key, tuple(allocated), nodes) == {}, (launcher, nodes, restart)
            assert not [e for e in run.events() if e.kind is Kind.QUARANTINED]
    finally:
        for p in load:
            p.kill()


def test_a_save_longer_than_the_partitions_grace_time_is_warned_of(slurm_cluster, tmp_path):
    """Partition low preempts with GraceTime 30 s and the cluster's KillWait is 30 s: a save that
    took 90 s in this run cannot fit between the signal and the kill."""
    run_dir = tmp_path / "run"
    spec = load_job(TINY, ["slurm.partition=low"])
    layout.create(layout.plan_run(spec, run_dir))
    RunDir(run_dir).record(Kind.CHECKPOINT, StartKey("1", 0), iteration=50, reason="interval", seconds=90.0)
    result = run_cli("validate", TINY, "--dry-run", "--set", "slurm.partition=low", "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "GraceTime" in line]
    assert warning and "90" in warning[0] and "60" in warning[0], result.stderr
    quick = tmp_path / "quick"
    layout.create(layout.plan_run(spec, quick))
    RunDir(quick).record(Kind.CHECKPOINT, StartKey("1", 0), iteration=50, reason="interval", seconds=5.0)
    result = run_cli("validate", TINY, "--dry-run", "--set", "slurm.partition=low", "--run-dir", quick)
    assert "GraceTime" not in result.stderr, result.stderr
