"""`hpc-mm cancel`, `submit --wait` and `logs` against Slurm as the test cluster answered
(tests/recorded/), in seconds: which orders each gives, what each records and prints."""

import pytest
from recorded.slurm import job_id

from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import cancel, wait
from hpc_mm.slurm.jobs import JobState

from conftest import JOBS
from conftest import cli_in_process as cli


def make_run(folder, job=None, name="run"):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["gpt.train_iters=300", "requeue.grace_seconds=10"])
    run = RunDir(layout.create(layout.plan_run(spec, folder / name)).run_dir)
    if job:
        run.record_job_id(job)
        run.record(Kind.SUBMITTED, StartKey(job, 0))
    return run


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(cancel, "POLL", 0)
    monkeypatch.setattr(wait, "POLL", 0)


def test_cancel_of_a_queued_job_is_at_once(tmp_path, recorded_slurm):
    fake = recorded_slurm("pending-begintime")
    run = make_run(tmp_path, job_id("pending-begintime"))
    rc, out, _ = cli("cancel", run.path)
    assert rc == 0 and fake.orders == [["scancel", job_id("pending-begintime")]]
    end = RunDir(run.path).starts()[-1].end
    assert end.kind is Kind.CANCELLED and "while it waited in the queue" in end.reason


def test_cancel_of_a_running_job_asks_it_to_save_first(tmp_path, recorded_slurm, monkeypatch):
    """The request is written for this job; the stop signal goes to its batch shell; once it ended,
    cancel says where it saved (finish records the end: the batch script runs it)."""
    fake = recorded_slurm("running-low")
    jid = job_id("running-low")
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs", jid)
    answers = iter([JobState.RUNNING] * 3)

    def job_ends_after_a_while(cmd, timeout=30):
        if cmd[0] == "sacct" and next(answers, None) is None:  # finish ran: the job ended
            fake.with_state("running-low", "CANCELLED")
        return fake(cmd, timeout)

    from hpc_mm.slurm import query

    monkeypatch.setattr(query, "_run", job_ends_after_a_while)
    rc, out, _ = cli("cancel", jid)
    assert rc == 0 and ["scancel", "--batch", "--signal=USR1", jid] in fake.orders
    assert ["scancel", jid] not in fake.orders  # it stopped by itself within the grace
    assert RunDir(run.path).cancel_request().job_id == jid
    assert f"cancelled job {jid}; it has no checkpoint yet" in out


def test_cancel_now_and_of_what_cannot_be_cancelled(tmp_path, recorded_slurm):
    fake = recorded_slurm("completed", "signalled-by-hand")
    run = make_run(tmp_path, job_id("signalled-by-hand"))
    rc, out, _ = cli("cancel", run.path, "--now")
    assert rc == 0 and fake.orders == [["scancel", job_id("signalled-by-hand")]]
    assert "at once (--now)" in out
    done = make_run(tmp_path, job_id("completed"), name="done")
    rc, _, err = cli("cancel", done.path)
    assert rc == 2 and err.startswith(f"error: JOB_ID: job {job_id('completed')} has already ended (COMPLETED)")
    rc, _, err = cli("cancel", "999999")
    assert rc == 2 and err.startswith("error: JOB_ID: Slurm knows no job 999999")


def test_cancel_help_says_what_now_does():
    rc, out, _ = cli("cancel", "--help")
    assert "without the last checkpoint" not in out and "KillWait" in out


def test_wait_follows_until_the_job_ends(tmp_path, recorded_slurm, capsys, monkeypatch):
    fake = recorded_slurm("running")
    jid = job_id("running")
    run = make_run(tmp_path, jid)
    polls = []

    def slurm(cmd, timeout=30):
        polls.append(cmd)
        if len([c for c in polls if c[0] == "squeue"]) == 3:
            fake.with_state("running", "COMPLETED")
        return fake(cmd, timeout)

    from hpc_mm.slurm import query

    monkeypatch.setattr(query, "_run", slurm)
    run.write_metric(Metric(iteration=300, loss=0.5, time=1.0))
    states = wait.wait([(jid, run.path)])
    assert states == {jid: JobState.COMPLETED}
    assert "iterations    300 of 300" in capsys.readouterr().out


def test_ctrl_c_while_waiting_says_the_job_keeps_running(tmp_path, recorded_slurm, capsys, monkeypatch):
    recorded_slurm("running")
    jid = job_id("running")
    run = make_run(tmp_path, jid)

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(wait, "_wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wait.wait([(jid, run.path)])
    assert f"job {jid} keeps running" in capsys.readouterr().err


def test_logs_of_a_run_with_several_jobs(tmp_path, recorded_slurm, monkeypatch):
    recorded_slurm()
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs", "74")
    for job, restart, text in (
        ("74", 0, "first job"),
        ("76", 0, "second job"),
        ("76", 1, "second job again"),
        ("77", 0, "third job"),
    ):
        run.record(Kind.STARTED, StartKey(job, restart), world_size=4)
        run.record_job_id(job)
        (run.logs / f"tiny-vlm-{job}-r{restart}-t0.out").write_text(f"[rank 0] {text}\n")
    assert cli("logs", run.path, "--rank", "0")[1] == "[rank 0] third job\n"  # the newest start
    assert cli("logs", run.path, "--restart", "2")[1] == "[rank 0] second job again\n"  # counted across the run
    assert cli("logs", run.path, "--job", "76")[1] == "[rank 0] second job again\n"
    assert cli("logs", "74", "--rank", "0")[1] == "[rank 0] first job\n"  # a job id: that job's newest start
    rc, _, err = cli("logs", run.path, "--restart", "9")
    assert rc == 2 and "the run has no start 9" in err
    rc, _, err = cli("logs", run.path, "--job", "76", "--restart", "0")
    assert rc == 2 and "start 0 was job 74, not job 76" in err


def test_report_takes_what_status_takes(tmp_path, recorded_slurm, monkeypatch):
    recorded_slurm()
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs", "69")
    for i in range(1, 11):
        run.write_metric(Metric(iteration=i, loss=1.0 / i, time=float(i)))
    rc, out, err = cli("report", "69")
    assert rc == 0 and "iterations    10 of 300" in out, err
    rc, _, err = cli("report", "runs/doesnotexist")
    assert rc == 2 and "no such run" in err
    rc, _, err = cli("report", "12345")
    assert rc == 2 and "no run under ./runs was submitted as job 12345" in err
