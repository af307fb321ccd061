"""`hpc-mm status` against Slurm as the test cluster answered (tests/recorded/): every state a run
can show, the pending reason, restarts across the jobs of a run directory, the timeline of starts,
and the table's shape (sweeps, --limit, --json)."""

import json
import os

import pytest
from recorded.slurm import job_id

from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm.jobs import JobState
from hpc_mm.slurm.status import run_status

from conftest import JOBS
from conftest import cli_in_process as cli


def make_run(folder, name="run", job=None, **info):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["gpt.train_iters=300"])
    run = RunDir(layout.create(layout.plan_run(spec, folder / name)).run_dir)
    if job:
        run.record_job_id(job, **info)
    return run


QUEUED_OR_RUNNING = [s for s in JobState if not s.ended and s is not JobState.UNKNOWN]
ENDED = [s for s in JobState if s.ended]


@pytest.mark.parametrize("state", QUEUED_OR_RUNNING + ENDED, ids=lambda s: s.value)
def test_every_slurm_state_shows(tmp_path, recorded_slurm, state):
    scenario = "running" if state in QUEUED_OR_RUNNING else "failed"
    fake = recorded_slurm()
    fake.with_state(scenario, state.value, "Priority" if state.queued else "None")
    run = make_run(tmp_path, job=job_id(scenario))
    info = run_status(run)
    assert info.state == state.value
    assert info.reason == ("Priority" if state.queued else None)


def test_a_pending_job_shows_why(tmp_path, recorded_slurm, monkeypatch, capsys):
    recorded_slurm("pending-begintime", "pending-held", "pending-resources")
    monkeypatch.chdir(tmp_path)
    for name in ("pending-begintime", "pending-held", "pending-resources"):
        make_run(tmp_path / "runs", name, job=job_id(name))
    rc, out, _ = cli("status")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "PENDING (BeginTime)" in rows["pending-begintime"]
    assert "PENDING (JobHeldUser)" in rows["pending-held"] and "PENDING (Resources)" in rows["pending-resources"]


@pytest.mark.parametrize(
    "events,state",
    [
        ([], "UNKNOWN"),
        ([(Kind.SUBMITTED, {})], "STARTING"),
        ([(Kind.STARTED, {})], "RUNNING"),
        ([(Kind.STARTED, {}), (Kind.EXITED, {"returncode": 0})], "RUNNING"),  # finish has not decided yet
        ([(Kind.STARTED, {}), (Kind.COMPLETED, {})], "COMPLETED"),
        ([(Kind.STARTED, {}), (Kind.FAILED, {"reason": "boom"})], "FAILED"),
        ([(Kind.STARTED, {}), (Kind.SIGNAL, {"name": "SIGTERM"})], "STOPPED"),
        ([(Kind.STARTED, {}), (Kind.STOPPED, {})], "STOPPED"),
        ([(Kind.STARTED, {}), (Kind.CANCELLED, {})], "CANCELLED"),
        ([(Kind.STARTED, {}), (Kind.GAVE_UP, {})], "GAVE_UP"),
        ([(Kind.STARTED, {}), (Kind.REQUEUED, {"cause": "preemption"})], "REQUEUED"),
    ],
)
def test_states_of_runs_slurm_does_not_know(tmp_path, recorded_slurm, events, state):
    recorded_slurm()  # the job is long forgotten (or never was: hpc-mm local)
    run = make_run(tmp_path, job="999999")
    for kind, data in events:
        run.record(kind, StartKey("999999", 0), **data)
    assert run_status(RunDir(run.path)).state == state


def test_restarts_count_every_start_of_every_job(tmp_path, recorded_slurm):
    recorded_slurm("running-after-requeue")
    jid = job_id("running-after-requeue")
    run = make_run(tmp_path, job=jid)
    first, second = StartKey("60", 0), StartKey("60", 1)
    for kind, key, data in [
        (Kind.SUBMITTED, first, {}),
        (Kind.STARTED, first, {}),
        (Kind.REQUEUED, first, {"cause": "preemption"}),
        (Kind.STARTED, second, {}),
        (Kind.CANCELLED, second, {"reason": "cancelled by hpc-mm cancel; last checkpoint 257"}),
        (Kind.SUBMITTED, StartKey(jid, 0), {}),
        (Kind.STARTED, StartKey(jid, 0), {}),
    ]:
        run.record(kind, key, **data)
    info = run_status(RunDir(run.path))
    assert (info.state, info.restarts, info.restart_cause) == ("RUNNING", 2, "resubmitted")
    assert info.outcome is None and info.last_event == "started"  # nothing stale from the cancelled job


def test_a_requeued_job_that_waits_counts_its_restart(tmp_path, recorded_slurm):
    recorded_slurm("preempted-requeued")
    jid = job_id("preempted-requeued")
    run = make_run(tmp_path, job=jid)
    run.record(Kind.STARTED, StartKey(jid, 0))  # Slurm requeued it before finish could say so
    info = run_status(RunDir(run.path))
    assert (info.state, info.restarts, info.restart_cause) == ("PENDING", 1, "requeued by Slurm")
    assert info.reason == "BeginTime"
    never = make_run(tmp_path, "b", job=jid)
    assert run_status(never).restarts == 0  # a run that never started has not restarted


def test_one_run_shows_its_starts_across_jobs(tmp_path, recorded_slurm, capsys):
    recorded_slurm("completed")
    jid = job_id("completed")
    run = make_run(tmp_path, job=jid)
    t = 1_700_000_000
    script = [
        (Kind.SUBMITTED, "60", 0, 0, {}),
        (Kind.STARTED, "60", 0, 10, {"checkpoint": None}),
        (Kind.CANCELLED, "60", 0, 100, {"cause": "user"}),
        (Kind.SUBMITTED, jid, 0, 110, {}),
        (Kind.STARTED, jid, 0, 120, {"checkpoint": 100}),
        (Kind.REQUEUED, jid, 0, 200, {"cause": "preemption"}),
        (Kind.STARTED, jid, 1, 260, {"checkpoint": 180}),
        (Kind.COMPLETED, jid, 1, 400, {"reason": "training finished"}),
    ]
    with open(run.events_file, "a") as f:
        for kind, job, restart, at, data in script:
            f.write(json.dumps({"event": kind.value, "time": t + at, "job_id": job, "restart": restart, **data}) + "\n")
    for i, at in enumerate(range(15, 390, 5)):
        run.write_metric(Metric(iteration=i + 1, loss=1.0, time=t + at))
    rc, out, _ = cli("status", run.path, "--json")
    starts = json.loads(out)["starts"]
    assert [(s["start"], s["job_id"], s["ended"]) for s in starts] == [
        (0, "60", "cancelled"),
        (1, jid, "requeued"),
        (2, jid, "completed"),
    ]
    assert [s["why"] for s in starts] == ["user", "preemption", "training finished"]
    rc, out, _ = cli("status", run.path)
    assert out.splitlines()[0].split()[0] == "RUN" and "2 (preemption)" in out.splitlines()[1]


def test_the_table_counts_a_sweep_once_and_prints_absolute_run_dirs(tmp_path, recorded_slurm, monkeypatch):
    recorded_slurm("running")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "runs" / "sweep"
    make_run(tmp_path / "runs", "older", job="999999")
    for task in range(3):
        make_run(
            sweep,
            f"task-{task}",
            job=f"{job_id('running')}_{task}",
            array=job_id("running"),
            task=task,
            values={"gpt.lr": task},
        )
    (sweep / layout.SWEEP_FILE).write_text(json.dumps({"array": job_id("running"), "tasks": []}))
    make_run(tmp_path / "runs", "newest", job="999998")
    rc, out, _ = cli("status", "--limit", "2", "--json")
    rows = json.loads(out)
    assert sorted(r["run_dir"] for r in rows) == sorted(
        [str((tmp_path / "runs" / "newest").resolve())] + [str((sweep / f"task-{t}").resolve()) for t in range(3)]
    )
    rc, out, _ = cli("status", "--limit", "2")
    assert "task-2" in out and "(1 older runs: --all shows them)" in out
    assert not any(line.startswith("older") for line in out.splitlines())
    rc, out, _ = cli("status", "runs/newest", "--json")
    assert json.loads(out)["run_dir"] == str((tmp_path / "runs" / "newest").resolve())


def test_status_of_nothing_and_of_no_such_run(tmp_path, recorded_slurm, monkeypatch):
    recorded_slurm()
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("status")
    assert rc == 2 and err.startswith("error: RUN_DIR: no runs under ./runs")
    rc, _, err = cli("status", "runs/doesnotexist")
    assert rc == 2 and "no such run" in err
    rc, _, err = cli("status", "12345")
    assert rc == 2 and err.startswith("error: JOB_ID: no run under ./runs was submitted as job 12345")


def test_a_job_is_found_by_its_id_from_any_folder_after_slurm_forgot_it(tmp_path, monkeypatch, recorded_slurm):
    """submit notes job id -> run directory for the user (run/known.py): `status JOB`, `report JOB`,
    `cancel JOB` find it from another folder, where ./runs does not hold it and Slurm no longer knows it."""
    from hpc_mm.run.rundir import RunDir
    from hpc_mm.slurm.runs import find

    from conftest import JOBS, cli_in_process

    recorded_slurm()  # a cluster that knows no job
    run = tmp_path / "elsewhere" / "run"
    assert cli_in_process("render", JOBS / "tiny-vlm.yaml", "--run-dir", run, "-o", os.devnull)[0] == 0
    RunDir(run).record_job_id("4711")
    monkeypatch.chdir(tmp_path)
    assert find("4711").path == run.resolve()
    rc, out, err = cli_in_process("status", "4711")
    assert rc == 0 and "4711" in out, err


def test_a_run_whose_job_file_no_longer_validates_is_shown_with_why(tmp_path, monkeypatch, recorded_slurm):
    from conftest import JOBS, cli_in_process

    recorded_slurm()
    runs = tmp_path / "runs"
    assert cli_in_process("render", JOBS / "tiny-vlm.yaml", "--run-dir", runs / "old", "-o", os.devnull)[0] == 0
    job = runs / "old" / "job.yaml"
    job.write_text(job.read_text().replace("lr: ", "lr: -"))  # as an older hpc-mm, or an edit, left it
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli_in_process("status", "--json")
    assert rc == 0, err
    [row] = json.loads(out)
    assert row["name"] == "old" and "no longer validates: gpt." in row["outcome"], row
