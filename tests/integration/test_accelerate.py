"""On the real test cluster, with the real `accelerate` from PyPI on CPUs: an `accelerate launch` entry
(tests/fixtures/accelerate_train.py, a diffusers-style training) on 2 nodes, really preempted,
requeued and resumed from its own checkpoint (resume:) with nothing lost: it ends bitwise where an
unbroken run of it does. And `post:` lines run once after a step that failed, the job keeping the
step's status."""

import json
import subprocess
import sys
import time

import torch

from hpc_mm.run.rundir import RunDir, read_events

from conftest import ROOT, run_cli
from test_slurm import preempt_and_resume, wait_for

FIXTURES = ROOT / "tests" / "fixtures"
STEPS, EVERY = 40, 5


def job(tmp_path, name, out, nodes=2, step_seconds=0.4):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        f"entry:\n  script: accelerate_train.py\n  workdir: {FIXTURES}\n  launcher: accelerate\n"
        f"  python: {sys.executable}\n"
        "  launcher_args: [--mixed_precision, 'no', --dynamo_backend, 'no']\n"
        f"  extra_args: [--output_dir, {out}, --max_train_steps, '{STEPS}', --checkpointing_steps, '{EVERY}',"
        f" --seed, '3', --step_seconds, '{step_seconds}']\n"
        f"distributed:\n  nnodes: {nodes}\n  nproc_per_node: 1\n"
        "slurm:\n  time: '00:15:00'\n  cpus_per_task: 1\n  partition: low\n"
        f"resume:\n  dir: {out}\n  args: [--resume_from_checkpoint, latest]\n  every: {EVERY}\n  steps: {STEPS}\n"
        "fault:\n  preflight: false\n"
        "env:\n  OMP_NUM_THREADS: '1'\n"
    )
    return path


def test_an_accelerate_entry_preempted_on_two_nodes_resumes_from_its_own_checkpoint(slurm_cluster, tmp_path):
    # the same training unbroken, emulating 2 nodes on this machine (hpc-mm local)
    reference = tmp_path / "reference"
    done = run_cli("local", job(tmp_path, "acc-ref", reference, step_seconds=0), "--run-dir", tmp_path / "ref-run",
                   cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    said = run_cli("validate", job(tmp_path, "acc", tmp_path / "out"), check=True).stdout
    assert f"a preemption loses up to {EVERY} steps: it resumes from its own checkpoints" in said, said

    out, run_dir = tmp_path / "out", tmp_path / "run"
    result = run_cli("submit", tmp_path / "acc.yaml", "--run-dir", run_dir, "--json", cwd=tmp_path, check=True)
    job_id = json.loads(result.stdout)["job_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-10").is_dir():
        time.sleep(0.5)
    assert (out / "checkpoint-10").is_dir(), run_cli("logs", run_dir).stdout[-3000:]
    preempt_and_resume(job_id, run_dir)
    assert wait_for(job_id, timeout=600) == "COMPLETED", [e["event"] for e in read_events(run_dir)]

    events = read_events(run_dir)
    requeued = [e for e in events if e["event"] == "requeued"]
    assert requeued and requeued[0]["cause"] == "preemption" and requeued[0]["iteration"] >= 10
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 2 and started[1]["checkpoint"] >= 10  # the second start found its checkpoint
    logs = run_cli("logs", run_dir, "--restart", "1").stdout
    assert "resumed from checkpoint-" in logs and "step 1 loss" not in logs
    ours, theirs = torch.load(out / "final.pt"), torch.load(reference / "final.pt")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the resumed run ended elsewhere"
    assert [e["event"] for e in events][-1] == "completed"


def test_post_lines_run_once_after_a_failed_step_and_the_job_keeps_its_status(slurm_cluster, tmp_path):
    path = tmp_path / "fails.yaml"
    marker = tmp_path / "post.log"
    path.write_text(
        "name: fails\n"
        f"entry:\n  script: /bin/sh\n  program: true\n  workdir: {tmp_path}\n  launcher: srun\n"
        "  extra_args: [-c, 'echo training; exit 3']\n"
        "distributed:\n  nnodes: 2\n  nproc_per_node: 1\n"
        "slurm:\n  time: '00:05:00'\n  partition: low\n"
        "fault:\n  preflight: false\n"
        f'post:\n  - echo "post on $(hostname) after $HPC_MM_STEP_RC" >> {marker}\n  - exit 1\n'
    )
    result = run_cli("submit", path, "--run-dir", tmp_path / "run", "--json", cwd=tmp_path, check=True)
    job_id = json.loads(result.stdout)["job_id"]
    assert wait_for(job_id, timeout=300) == "FAILED"
    lines = marker.read_text().splitlines()
    # once, with the step's status as the batch script saw it (srun's: 3, or 143 where it ended the
    # other task first), the one the run recorded
    ended = [e for e in read_events(tmp_path / "run") if e["event"] == "failed"]
    assert len(lines) == 1 and ended and lines[0].endswith(f"after {ended[-1]['returncode']}"), (lines, ended)
    assert ended[-1]["returncode"] in (3, 143)
    exit_code = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "ExitCode"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
    assert exit_code and exit_code.split(":")[0] != "0", exit_code  # the job's own status, not the post lines'
    batch = RunDir(tmp_path / "run").batch_log("fails", job_id)
    assert "the post lines ended with exit code 1; the job keeps its status" in batch.read_text()
