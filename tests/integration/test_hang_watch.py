"""On the real test cluster: an entry that prints no iteration line (a progress bar, then silence
while it works) outlives every hang budget and completes; the same entry stopped (SIGSTOP) is found
hung by liveness and ended."""

import json
import os
import signal

from hpc_mm.run.rundir import read_events

from conftest import ROOT, run_cli
from test_faults import finished, processes, until

FIXTURES = ROOT / "tests" / "fixtures"
BUDGET = 12  # seconds: every hang floor


def submit(tmp_path, name, seconds, silent):
    out = tmp_path / f"{name}.out"
    job = tmp_path / f"{name}.yaml"
    job.write_text(
        f"name: {name}\n"
        f"entry:\n  script: sample_video.py\n  workdir: {FIXTURES}\n  kind: command\n"
        f"  extra_args: [--seconds, '{seconds}', --silent, '{silent}', --out, {out}]\n"
        "slurm:\n  nodes: 2\n  time: '00:10:00'\n  cpus_per_task: 1\n  partition: low\n"
        f"fault:\n  hang_floor_startup: {BUDGET}\n  hang_floor_step: {BUDGET}\n  hang_floor_checkpoint: {BUDGET}\n"
        "requeue:\n  inside: false\n"
        "env:\n  OMP_NUM_THREADS: '1'\n"
    )
    said = run_cli("validate", job, check=True).stdout
    assert "hang watchdog: liveness only" in said and f"budget {BUDGET} s" in said, said
    result = run_cli("submit", job, "--run-dir", tmp_path / name, "--json", check=True)
    return json.loads(result.stdout)["job_id"], tmp_path / name, out


def test_a_command_printing_a_bar_or_nothing_is_not_ended_and_the_same_stopped_is(slurm_cluster, tmp_path):
    healthy, healthy_dir, out = submit(tmp_path, "bar", seconds=2.5 * BUDGET, silent=1.5 * BUDGET)
    stopped, stopped_dir, _ = submit(tmp_path, "stopped", seconds=6 * BUDGET, silent=0)
    started = until(lambda: next((e for e in read_events(stopped_dir) if e["event"] == "started"), None))
    rank = until(lambda: processes(started["hosts"][-1], training_only=True, job_id=stopped))[0]
    os.kill(rank, signal.SIGSTOP)
    try:
        assert finished(healthy) == "COMPLETED", read_events(healthy_dir)[-3:]
        assert [e["event"] for e in read_events(healthy_dir) if e["event"] in ("hang", "completed")] == ["completed"]
        assert sorted(p.name for p in tmp_path.glob("bar.out.*")) == ["bar.out.0", "bar.out.1"]
        assert finished(stopped) != "COMPLETED"
        hang = next(e for e in read_events(stopped_dir) if e["event"] == "hang")
        assert hang["phase"] == "liveness" and hang["budget_seconds"] == BUDGET, hang
        assert [b["why"] for b in hang["blamed"]] == ["stopped"] and hang["nodes"] == [started["hosts"][-1]], hang
    finally:
        try:
            os.kill(rank, signal.SIGKILL)
        except ProcessLookupError:
            pass
