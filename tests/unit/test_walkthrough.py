"""What a new user's walk through stopping, resubmitting and following a run found: each a line
or an answer that was wrong, now right."""

import json

import pytest

from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm.render import context
from hpc_mm.slurm.submit import sbatch_error

from conftest import JOBS
from conftest import cli_in_process as cli


@pytest.mark.parametrize(
    "limit,fine",
    [("00:01:30", False), ("1:30", False), ("1-00:00:30", False), ("00:02:00", True), ("90", True), ("2-12", True)],
)
def test_time_limits_slurm_would_round_are_refused(limit, fine):
    rc, _, err = cli("validate", JOBS / "tiny-vlm.yaml", "--set", f"slurm.time={limit}")
    assert (rc == 0) is fine, err
    if not fine:
        assert err.startswith("error: slurm.time: ") and "whole minutes" in err and len(err.splitlines()) == 1


def test_a_grace_that_leaves_no_training_time_is_refused():
    rc, _, err = cli("validate", JOBS / "tiny-vlm.yaml", "--set", "slurm.time=2", "--set", "requeue.grace_seconds=90")
    assert rc == 2 and err.startswith("error: requeue.grace_seconds: 90 s of grace and up to 60 s of Slurm's timer")
    assert cli("validate", JOBS / "tiny-vlm.yaml", "--set", "slurm.time=3", "--set", "requeue.grace_seconds=90")[0] == 0


def test_a_word_where_a_number_goes_has_a_hint_and_a_bad_lr_no_follow_ons():
    rc, _, err = cli("validate", JOBS / "tiny-vlm.yaml", "--set", "gpt.lr='abc'")
    assert (
        rc == 2
        and err
        == "error: gpt.lr: 'abc' is not a number (hint: write a plain number such as 2.0e-5 or 0.1 "
        "(no quotes, units or words))\n"
    )
    rc, _, err = cli("validate", JOBS / "tiny-vlm.yaml", "--set", "gpt.lr=-1")
    assert rc == 2 and err.splitlines() == ["error: gpt.lr: must be positive, got -1.0"]


def test_args_says_where_the_run_directory_goes():
    rc, out, err = cli("args", JOBS / "tiny-vlm.yaml")
    assert "--save RUN_DIR/checkpoints" in out and "--run-dir RUN_DIR" in out
    assert "RUN_DIR stands for the run directory submit creates" in err
    rc, out, err = cli("args", JOBS / "tiny-vlm.yaml", "--run-dir", "/tmp/r")
    assert "--save /tmp/r/checkpoints" in out and err == ""


def test_the_preflight_lines_of_several_nodes_never_run_together():
    """srun line-buffers a step's output unless told --unbuffered; each node prints its result in one write."""
    ctx = context(load_job(JOBS / "tiny-vlm.yaml"), layout.RUNS / "x")
    assert "--unbuffered" not in ctx.preflight and "--unbuffered" in ctx.srun


def test_a_refusal_blames_the_field_the_user_set_at_dry_run(tmp_path, recorded_slurm, monkeypatch):
    from recorded.slurm import RECORDING

    fake = recorded_slurm()
    fake.refuse["sbatch"] = RECORDING["orders"]["test-only-gres"][1][2]  # the test cluster's answer: no GPUs
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("submit", JOBS / "tiny-vlm.yaml", "--gpus-per-node", "1", "--dry-run")
    assert rc == 2 and err.startswith("error: slurm.gpus_per_node: Slurm refused the job: Invalid generic resource")


def test_a_refusal_blames_the_field_the_user_set():
    text = "sbatch: error: Invalid generic resource (gres) specification"  # the test cluster's answer to both
    gpus = load_job(JOBS / "tiny-vlm.yaml", ["slurm.gpus_per_node=1"])
    assert sbatch_error(text, gpus).problems[0].field == "slurm.gpus_per_node"
    gres = load_job(JOBS / "tiny-vlm.yaml", ["slurm.gres=gpu:1"])
    assert sbatch_error(text, gres).problems[0].field == "slurm.gres"


def test_report_of_a_sweep_lists_its_tasks_best_first(tmp_path, recorded_slurm, monkeypatch):
    recorded_slurm()
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "runs" / "sweep"
    for task, loss in enumerate((0.5, 0.2, 0.9)):
        spec = load_job(JOBS / "tiny-vlm.yaml", [f"gpt.lr={task + 1}e-4"])
        run = RunDir(layout.create(layout.plan_run(spec, sweep / f"task-{task}")).run_dir)
        run.record_job_id(f"500_{task}", array="500", task=task, values={"gpt.lr": f"{task + 1}e-4"})
        for i in range(1, 11):
            run.write_metric(Metric(iteration=i, loss=loss, time=float(i)))
    (sweep / layout.SWEEP_FILE).write_text(json.dumps({"array": "500", "tasks": []}))
    for target in ("runs/sweep", "500"):
        rc, out, err = cli("report", target)
        rows = out.splitlines()[1:4]
        assert rc == 0 and [r.split()[0] for r in rows] == ["1", "0", "2"], (out, err)  # best final loss first
    assert (sweep / "report.png").is_file()
