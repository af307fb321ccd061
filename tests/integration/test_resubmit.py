"""A run directory that holds many jobs, on the real test cluster, as a user who is not root: a job
cancelled with `hpc-mm cancel`, the same run resubmitted (it completes, not cancelled by the old
request), resubmitted again for more iterations and really preempted (it requeues, starts again as
soon as the preempting job has ended, resumes and ends bit for bit where an uninterrupted run ends),
then a crash of a resumed job after that preemption (a crash, not a stop), and a resubmission whose
schedule the checkpoint refuses (refused at submit, one line)."""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import torch

from hpc_mm.run.rundir import read_events

from conftest import ROOT, run_cli
from test_faults import finished, metrics_rows, until
from test_slurm import preempt, sacct

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"
USER = "hpcmm-user"
# Constant learning rate and weight decay: extending train_iters (with override_opt_param_scheduler)
# leaves the schedule of the iterations already trained as it was, so the weights can match bit for bit.
SCHEDULE = [
    "gpt.lr_decay_style=constant",
    "gpt.lr_warmup_iters=0",
    "checkpoint.save_interval=40",
    "slurm.partition=low",
    "slurm.exclusive=true",
]


@dataclass
class User:
    name: str
    home: Path

    def cli(self, *args, check=True, timeout=600):
        """`hpc-mm` as this user, from their own folder, with their own environment."""
        env = {"HOME": str(self.home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # this test worker's cluster (conftest.py)
        result = subprocess.run(
            ["runuser", "-u", self.name, "--", sys.executable, "-m", "hpc_mm", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=self.home,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"hpc-mm {' '.join(map(str, args))} as {self.name} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="module")
def user():
    """A user who is not root and may run hpc-mm from this checkout (its interpreter and files must be
    reachable by others: folders on the way get o+x for the test, and get their modes back after)."""
    if subprocess.run(["id", USER], capture_output=True).returncode:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", USER], check=True)
    changed = []
    for target in (Path(os.path.realpath(sys.executable)), ROOT):
        for folder in target.parents:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(folder, mode | stat.S_IXOTH)
                changed.append((folder, mode))
    home = Path(tempfile.mkdtemp(prefix="hpc-mm-user-"))
    uid = pwd.getpwnam(USER).pw_uid
    os.chown(home, uid, uid)
    try:
        yield User(USER, home)
    finally:
        subprocess.run(["scancel", "-u", USER], capture_output=True)
        for folder, mode in reversed(changed):
            os.chmod(folder, mode)
        shutil.rmtree(home, ignore_errors=True)


def submitted(result) -> str:
    return json.loads(result.stdout)["job_id"]


def weights(run_dir, iteration):
    path = run_dir / "checkpoints" / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt"
    return torch.load(path, weights_only=False)["model"]


def test_a_run_directory_holds_many_jobs(slurm_cluster, user, tmp_path):
    baseline = tmp_path / "baseline"
    base_job = submitted(
        run_cli(
            "submit",
            STANDIN,
            "--run-dir",
            baseline,
            "--json",
            "-N",
            "2",
            *[a for o in SCHEDULE[:-2] + ["gpt.train_iters=240"] for a in ("--set", o)],
            cwd=tmp_path,
            check=True,
        )
    )
    run_dir = user.home / "run"
    sets = [a for o in SCHEDULE for a in ("--set", o)]

    # 1. Submit, then `hpc-mm cancel` it: it saves and ends cancelled.
    first = submitted(
        user.cli("submit", STANDIN, "--run-dir", run_dir, "--json", *sets, "--set", "gpt.train_iters=120")
    )
    until(lambda: metrics_rows(run_dir) >= 20)
    user.cli("cancel", first)
    until(lambda: sacct(first)[0] == "CANCELLED", timeout=60)  # (sacct: once slurmdbd has it)
    assert finished(base_job) == "COMPLETED"

    # 2. Resubmit the same job file into the run directory: it trains to the end and completes; the
    #    old cancel request is the old job's.
    second = submitted(
        user.cli("submit", STANDIN, "--run-dir", run_dir, "--json", *sets, "--set", "gpt.train_iters=120")
    )
    assert finished(second) == "COMPLETED", read_events(run_dir)[-3:]

    # 3. A resubmission the checkpoint refuses (a changed schedule) is refused at submit, in one line.
    refused = user.cli("submit", STANDIN, "--run-dir", run_dir, *sets, "--set", "gpt.train_iters=240", check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("error: gpt: the learning-rate schedule changed since the checkpoint: ")
    assert "gpt.train_iters: 120 -> 240" in refused.stderr

    # 4. Resubmit for more iterations, and really preempt it: it requeues and starts again as soon as
    #    the preempting job has ended (the hold Slurm puts on a requeued job is released: no root here).
    third = submitted(
        user.cli(
            "submit",
            STANDIN,
            "--run-dir",
            run_dir,
            "--json",
            *sets,
            "--set",
            "gpt.train_iters=240",
            "--set",
            "gpt.extra.override_opt_param_scheduler=true",
        )
    )
    until(lambda: any(e["event"] == "started" and e["job_id"] == third for e in read_events(run_dir)))
    until(lambda: metrics_rows(run_dir) >= 150)
    high = preempt(hold=3)
    until(lambda: any(e["event"] == "requeued" and e["job_id"] == third for e in read_events(run_dir)))
    assert finished(high) == "COMPLETED"
    high_ended = _end_time(high)
    restarted = until(
        lambda: next(
            (e for e in read_events(run_dir) if e["event"] == "started" and e["job_id"] == third and e["restart"] == 1),
            None,
        ),
        timeout=180,
    )
    assert restarted["batch_started_at"] - high_ended < 10, (restarted, high_ended)
    assert finished(third) == "COMPLETED"
    requeued = next(e for e in read_events(run_dir) if e["event"] == "requeued" and e["job_id"] == third)
    assert requeued["cause"] == "preemption"
    assert any(e["event"] == "released" and e["job_id"] == third and e["restart"] == 1 for e in read_events(run_dir))
    for key, value in weights(baseline, 240).items():
        assert torch.equal(value, weights(run_dir, 240)[key])

    # 5. The timeline shows the three jobs and their starts in order; logs the newest start only.
    starts = json.loads(user.cli("status", run_dir, "--json").stdout)["starts"]
    assert [(s["start"], s["job_id"], s["restart"], s["ended"]) for s in starts] == [
        (0, first, 0, "cancelled"),
        (1, second, 0, "completed"),
        (2, third, 0, "requeued"),
        (3, third, 1, "completed"),
    ]
    newest = user.cli("logs", run_dir, "--rank", "0").stdout
    assert "successfully loaded checkpoint" in newest and f"starting at iteration {requeued['iteration']}" in newest
    assert "starting at iteration 0" not in newest  # nothing of the first job's start
    report = user.cli("report", run_dir).stdout
    assert "restarts      3 (resubmitted -> resumed at" in report and "preemption -> resumed at" in report

    # 6. A crash of a resumed job after that preemption is a crash, not a stop signal.
    data = json.loads((ROOT / "tests/fixtures/standin/data.json").read_text())
    data["dataset_param"]["crash_at_iteration"] = 260
    crashing = user.home / "data.json"
    crashing.write_text(json.dumps(data))
    fourth = submitted(
        user.cli(
            "submit",
            STANDIN,
            "--run-dir",
            run_dir,
            "--json",
            *sets,
            "--set",
            "gpt.train_iters=300",
            "--set",
            "gpt.extra.override_opt_param_scheduler=true",
            "--set",
            f"mm.data={crashing}",
        )
    )
    assert finished(fourth) == "FAILED"
    last = read_events(run_dir)[-1]
    assert (last["event"], last["cause"], last["job_id"]) == ("failed", "crash", fourth), last
    assert "a crash after iteration" in last["reason"]
    assert [e["event"] for e in read_events(run_dir) if e["job_id"] == fourth].count("failed") == 1


def _end_time(job_id: str) -> float:
    out = subprocess.run(
        ["sacct", "-a", "-j", job_id, "-X", "-n", "-P", "-o", "End"], capture_output=True, text=True
    ).stdout
    return datetime.fromisoformat(out.strip().splitlines()[-1]).timestamp()
