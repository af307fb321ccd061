"""On the real test cluster, with the real `ray` from PyPI on CPUs: `entry.launcher: ray` forms a Ray
cluster across 2 nodes (the head on the first, a worker on the second; the driver starts once every
node has joined) and runs a verl-style driver (tests/fixtures/ray_driver.py) once, on the head, whose
every step uses both nodes' workers; preempted, requeued and resumed from its own checkpoint
(resume:), it ends where an unbroken run ends; the cluster is gone with the job."""

import json
import subprocess
import sys
import time

from hpc_mm.run.rundir import read_events

from conftest import ROOT, run_cli
from test_slurm import preempt_and_resume, wait_for

FIXTURES = ROOT / "tests" / "fixtures"
STEPS, EVERY = 30, 5


def unbroken(nodes: int = 2) -> int:
    """The driver's state after STEPS steps, as an unbroken run computes it."""
    state = 0
    for step in range(STEPS):
        state = (state * 31 + sum((step * 7919 + part * 104729) % 1000003 for part in range(nodes))) % 2**61
    return state


def test_a_ray_cluster_across_two_nodes_runs_the_driver_once_and_resumes_it_after_a_preemption(slurm_cluster, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    job = tmp_path / "grpo.yaml"
    job.write_text(
        "name: grpo\n"
        f"entry:\n  script: ray_driver.py\n  workdir: {FIXTURES}\n  launcher: ray\n  python: {sys.executable}\n"
        f"  extra_args: [trainer.default_local_dir={out}, trainer.save_freq={EVERY},"
        f" trainer.total_training_steps={STEPS}, trainer.nnodes=2, trainer.step_seconds=0.3]\n"
        "distributed:\n  nnodes: 2\n  nproc_per_node: 1\n"
        "slurm:\n  time: '00:15:00'\n  cpus_per_task: 1\n  partition: low\n"
        f"resume:\n  dir: {out}\n  pattern: 'global_step_(\\d+)'\n  args: [trainer.resume_mode=auto]\n"
        f"  every: {EVERY}\n  steps: {STEPS}\n"
        "fault:\n  preflight: false\n"
        "env:\n  RAY_USAGE_STATS_ENABLED: '0'\n  OMP_NUM_THREADS: '1'\n"
    )
    said = run_cli("validate", job, check=True).stdout
    assert f"a preemption loses up to {EVERY} steps" in said, said
    job_id = json.loads(run_cli("submit", job, "--run-dir", run_dir, "--json", check=True).stdout)["job_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / f"global_step_{2 * EVERY}").is_dir():
        time.sleep(0.5)
    assert (out / f"global_step_{2 * EVERY}").is_dir(), run_cli("logs", run_dir).stdout[-3000:]
    preempt_and_resume(job_id, run_dir)
    assert wait_for(job_id, timeout=600) == "COMPLETED", [e["event"] for e in read_events(run_dir)]

    events = read_events(run_dir)
    requeued = [e for e in events if e["event"] == "requeued"]
    assert requeued and requeued[0]["cause"] == "preemption"
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 2 and started[1]["checkpoint"] >= 2 * EVERY
    for restart in (0, 1):
        head = run_cli("logs", run_dir, "--restart", restart).stdout
        assert "hpc-mm ray: 2 of 2 nodes joined" in head and "driver: 2 nodes in the cluster" in head, head[-2000:]
        assert head.index("2 of 2 nodes joined") < head.index("the driver starts")
        steps = [line for line in head.splitlines() if "step:" in line]
        assert steps and all(line.endswith("nodes:2") for line in steps)  # every step used both nodes
        assert head.count("driver: 2 nodes in the cluster") == 1  # the driver ran once, on the head
    assert "driver: resumed from global_step_" in run_cli("logs", run_dir, "--restart", 1).stdout
    assert json.loads((out / "final.json").read_text()) == {"state": unbroken(), "step": STEPS}
    left = subprocess.run(["pgrep", "-f", f"hpc-mm-ray-{job_id}"], capture_output=True, text=True).stdout
    assert not left.strip(), f"Ray processes of job {job_id} outlived it: {left}"
