"""The requeue policy, row by row, through `hpc-mm finish` itself: a run directory as the start
left it, the batch script's environment, and Slurm as the real test cluster answered
(tests/recorded/). Each row checks the event finish records and the orders it gives Slurm."""

import json

import pytest
from recorded.slurm import job_id, moment

from hpc_mm.job.jobfile import load_job
from hpc_mm.launch import finish as finish_module
from hpc_mm.launch import requeue
from hpc_mm.launch.finish import finish
from hpc_mm.launch.hold import note_requeue_by_slurm, release_hold
from hpc_mm.launch.requeue import PREEMPTION, SIGNAL, TIME_LIMIT, classify
from hpc_mm.run import layout
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm.jobs import SlurmJob

from conftest import JOBS

TRAIN_ITERS = 3000


class Run:
    """A run directory of the tiny job, and the start `finish` is called for."""

    def __init__(self, tmp_path, monkeypatch, *overrides, scenario="running-low", restart=0):
        # the recorded time-limit job asked for its signal 90 s before the limit (--signal=B:USR1@90)
        spec = load_job(
            JOBS / "tiny-vlm.yaml",
            [f"gpt.train_iters={TRAIN_ITERS}", "requeue.grace_seconds=90", "slurm.time=10", *overrides],
        )
        self.path = tmp_path / "run"
        layout.create(layout.plan_run(spec, self.path))
        self.run = RunDir(self.path)
        self.monkeypatch = monkeypatch
        self.released = []  # the release-hold processes finish would start
        monkeypatch.setattr(finish_module, "spawn_release", lambda key, run: self.released.append(key))
        self.job(job_id(scenario), restart)
        monkeypatch.setattr(requeue, "clock", lambda: moment(scenario))

    def job(self, job, restart=0):
        """The start finish runs for: its job and restart, as Slurm tells the batch script."""
        self.key = StartKey(job, restart)
        for name, value in {
            "SLURM_JOB_ID": job,
            "SLURM_RESTART_COUNT": str(restart),
            "SLURM_JOB_NODELIST": "n[1-2]",
        }.items():
            self.monkeypatch.setenv(name, value)
        return self

    def checkpoint(self, iteration):
        """A whole checkpoint at `iteration`, as Megatron writes it (no manifest), committed."""
        folder = self.path / "checkpoints" / f"iter_{iteration:07d}" / "mp_rank_00"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model_optim_rng.pt").write_bytes(b"weights")
        (self.path / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(iteration))
        return self

    def started(self, at, key=None):
        self.run.record(Kind.STARTED, key or self.key, checkpoint=at)
        return self

    def hung(self, rank, host="n2"):
        """Node 0's watchdog found the step hung, rank `rank` on `host` stopped first."""
        blamed = [{"rank": rank, "host": host, "node": 1, "state": "T", "why": "stopped"}]
        self.run.record(Kind.HANG, self.key, phase="step", stalled_seconds=31.0, nodes=[host], blamed=blamed)
        return self

    def ended(self, kind, key, **data):
        self.run.record(kind, key, **data)
        return self

    def finish(self, returncode=0, signal=None, **options):
        rc = finish(self.path, returncode, signal, **options)
        return rc, RunDir(self.path).start(self.key).end


def orders(fake, *words):
    return [o for o in fake.orders if all(w in o for w in words)]


@pytest.mark.parametrize(
    "scenario,signal,cause",
    [
        ("being-preempted", "USR1", PREEMPTION),  # Slurm set PreemptTime: a preemption, whatever the signal
        ("being-preempted", "TERM", PREEMPTION),  # sites without preempt_send_user_signal send only SIGTERM
        ("at-time-limit", "USR1", TIME_LIMIT),  # the end is near (the signal comes up to a minute early)
        ("signalled-by-hand", "USR1", SIGNAL),  # `scancel --signal=USR1`: neither
    ],
)
def test_a_stop_signal_is_told_apart_and_requeued(tmp_path, monkeypatch, recorded_slurm, scenario, signal, cause):
    fake = recorded_slurm(scenario)
    run = Run(tmp_path, monkeypatch, scenario=scenario).started(40).checkpoint(60)
    rc, end = run.finish(signal=signal)
    assert rc == 0 and (end.kind, end.cause, end.iteration) == (Kind.REQUEUED, cause, 60)
    assert orders(fake, "requeue", job_id(scenario))
    assert run.released == [StartKey(job_id(scenario), 0)]  # and Slurm's hold is lifted once the job is pending


def test_classify_from_recorded_answers():
    from recorded.slurm import RecordedSlurm

    from hpc_mm.slurm import query

    for scenario, cause in (
        ("being-preempted", PREEMPTION),
        ("at-time-limit", TIME_LIMIT),
        ("signalled-by-hand", SIGNAL),
        ("running", SIGNAL),
    ):
        saved = query._run
        query._run = RecordedSlurm(scenario)
        try:
            assert classify(query.show_job(job_id(scenario)), 90, now=moment(scenario)) == cause, scenario
        finally:
            query._run = saved
    assert classify(SlurmJob("1"), 90) == SIGNAL  # Slurm could not say


def test_a_finished_run_is_complete_whatever_ends_it(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, scenario="being-preempted").started(100).checkpoint(TRAIN_ITERS)
    for returncode, signal in ((241, "USR1"), (1, None), (0, None)):
        rc, end = run.finish(returncode, signal)
        assert rc == 0 and end.kind is Kind.COMPLETED and "training finished" in end.reason
    assert not orders(fake, "requeue")


@pytest.mark.parametrize(
    "signal,kind,words",
    [
        ("TERM", Kind.CANCELLED, "scancel or the hard time limit"),
        ("USR2", Kind.FAILED, "not by requeue.signal USR1"),
    ],
)
def test_other_signals_end_the_job(tmp_path, monkeypatch, recorded_slurm, signal, kind, words):
    fake = recorded_slurm("signalled-by-hand")
    rc, end = Run(tmp_path, monkeypatch, scenario="signalled-by-hand").started(40).checkpoint(60).finish(0, signal)
    assert end.kind is kind and words in end.reason and not orders(fake, "requeue")


def test_a_signal_that_reached_only_the_step_is_a_stop(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("signalled-by-hand")
    run = Run(tmp_path, monkeypatch, scenario="signalled-by-hand").started(40).checkpoint(60)
    run.run.record(Kind.SIGNAL, run.key, name="SIGUSR1", returncode=0)  # the launchers saw it, the batch shell did not
    rc, end = run.finish(0, None)
    assert (end.kind, end.cause) == (Kind.REQUEUED, SIGNAL)


def test_time_limit_requeues_only_with_restarts_left_and_progress(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("at-time-limit")
    jid = job_id("at-time-limit")
    run = Run(tmp_path, monkeypatch, "requeue.max_restarts=2", scenario="at-time-limit")
    for restart in (0, 1):
        run.started(restart * 50, StartKey(jid, restart)).ended(Kind.REQUEUED, StartKey(jid, restart), cause=TIME_LIMIT)
    run.job(jid, 2).started(100).checkpoint(150)
    rc, end = run.finish(0, "USR1")
    assert end.kind is Kind.FAILED and "restart limit reached (2 of requeue.max_restarts = 2)" in end.reason

    other = Run(tmp_path / "b", monkeypatch, scenario="at-time-limit").started(60).checkpoint(60)
    rc, end = other.finish(0, "USR1")
    assert end.kind is Kind.FAILED and "no progress this restart" in end.reason


def test_preemptions_never_use_up_restarts(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("being-preempted")
    jid = job_id("being-preempted")
    run = Run(tmp_path, monkeypatch, "requeue.max_restarts=1", scenario="being-preempted")
    for restart in range(5):
        run.started(restart * 10, StartKey(jid, restart)).ended(Kind.REQUEUED, StartKey(jid, restart), cause=PREEMPTION)
    run.job(jid, 5).started(50).checkpoint(50)
    assert run.finish(0, "USR1")[1].kind is Kind.REQUEUED  # even without progress: it was not the job's doing


def test_preflight_failures(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch)
    run.run.write_preflight(run.key, _result("n1", []))
    run.run.write_preflight(run.key, _result("n2", ["n2: no /dev/davinci*"]))
    rc, end = run.finish(1, None, preflight_failed=True)
    assert (end.kind, end.cause, end.get("exclude")) == (Kind.REQUEUED, "preflight", ["n2"])
    assert orders(fake, "ExcNodeList=n2")
    quarantined = RunDir(run.path).start(run.key).last(Kind.QUARANTINED)
    assert quarantined.get("nodes") == ["n2"] and quarantined.get("applied") is True

    everywhere = Run(tmp_path / "b", monkeypatch)
    for node in ("n1", "n2"):
        everywhere.run.write_preflight(everywhere.key, _result(node, [f"{node}: no script pretrain_vlm.py"]))
    rc, end = everywhere.finish(1, None, preflight_failed=True)
    assert end.kind is Kind.FAILED and "the preflight failed on every node" in end.reason


def _result(node, problems):
    from hpc_mm.run.records import PreflightResult

    return PreflightResult(node, tuple(problems), 0.5)


def test_a_hang_requeues_without_the_blamed_node(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch).started(50).checkpoint(100).hung(3)
    rc, end = run.finish(137, None)
    assert (end.kind, end.cause, end.get("exclude")) == (Kind.REQUEUED, "hang", ["n2"])
    assert "stopped first: rank 3 on n2" in end.reason and orders(fake, "ExcNodeList=n2")


def test_a_dead_node_is_found_from_sruns_complaint(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch).started(50).checkpoint(100)
    run.run.batch_log("tiny-vlm", run.key.job_id).write_text(
        f"hpc-mm: job {run.key.job_id} restart 0 on n[1-2] started now\n"
        "srun: error: Node failure on n2\nsrun: error: n1: task 0: Killed\n"
    )
    rc, end = run.finish(1, None)
    assert (end.kind, end.cause, end.get("exclude")) == (Kind.REQUEUED, "node-failure", ["n2"])


def test_crashes_are_retried_until_they_repeat(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    jid = job_id("running-low")
    final = Run(tmp_path / "a", monkeypatch).started(0).checkpoint(40)
    final.run.write_metric(_metric(50))
    rc, end = final.finish(1, None)
    assert end.kind is Kind.FAILED and "requeue.on_failure = 0" in end.reason

    run = Run(tmp_path / "b", monkeypatch, "requeue.on_failure=3").started(0).checkpoint(40)
    run.run.write_metric(_metric(50, at=2e9))
    rc, end = run.finish(1, None)
    # a crash needs no queue: the step starts again inside the allocation (finish tells the script)
    assert (rc, end.kind, end.get("failure")) == (75, Kind.RESTARTED, "a crash after iteration 50")
    assert not orders(fake, "requeue")
    run.job(jid, 1).started(40, StartKey(jid, 1))
    rc, end = run.finish(1, None)
    assert rc == requeue.GAVE_UP_EXIT and end.kind is Kind.GAVE_UP and "the same failure twice" in end.reason


def _metric(iteration, at=2e9):
    from hpc_mm.run.records import Metric

    return Metric(iteration=iteration, loss=1.0, time=at)


def test_the_entrys_own_error_fails_the_start_and_is_never_retried(tmp_path, monkeypatch, recorded_slurm, capsys):
    fake = recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch, "requeue.on_failure=3").started(1500).checkpoint(1500)
    error = "gpt: the learning-rate schedule changed since the checkpoint: gpt.train_iters: 1500 -> 2000"
    run.run.record(Kind.EXITED, run.key, returncode=1, error=error)
    rc, end = run.finish(1, None)
    assert (end.kind, end.cause, end.reason) == (Kind.FAILED, "error", error)
    assert f"error: {error}" in capsys.readouterr().out.splitlines()  # in the batch log, one line
    assert not orders(fake, "requeue")


def test_an_unfinished_step_that_exits_0_is_a_failure(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    rc, end = Run(tmp_path, monkeypatch).started(40).checkpoint(60).finish(0, None)
    assert end.kind is Kind.FAILED and "without a stop signal; training is unfinished" in end.reason


def test_starts_without_progress_give_up(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("at-time-limit")
    jid = job_id("at-time-limit")
    run = Run(
        tmp_path,
        monkeypatch,
        "requeue.max_restarts=10",
        "requeue.max_restarts_without_progress=3",
        scenario="at-time-limit",
    ).checkpoint(100)
    for restart in range(2):
        run.started(100, StartKey(jid, restart)).ended(Kind.REQUEUED, StartKey(jid, restart), cause="hang")
    run.job(jid, 2).started(100)
    run.run.record(Kind.HANG, run.key, phase="step", stalled_seconds=200, nodes=[], blamed=[])
    rc, end = run.finish(1, None)
    assert end.kind is Kind.GAVE_UP and "3 starts in a row moved no checkpoint" in end.reason


def test_nothing_is_requeued_with_requeue_off(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, "requeue.enabled=false", scenario="being-preempted").started(0).checkpoint(20)
    rc, end = run.finish(0, "USR1")
    assert end.kind is Kind.FAILED and "requeue.enabled is false" in end.reason


def test_a_cancel_request_belongs_to_the_job_it_was_made_for(tmp_path, monkeypatch, recorded_slurm):
    """`hpc-mm cancel` of an earlier job in the run directory never cancels a later one."""
    fake = recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, scenario="being-preempted")
    earlier = StartKey("60", 0)
    run.run.record(Kind.SUBMITTED, earlier)
    run.started(0, earlier).ended(Kind.CANCELLED, earlier, cause="user")
    run.run.request_cancel("60")
    run.run.record(Kind.SUBMITTED, run.key)
    run.started(100).checkpoint(305)
    rc, end = run.finish(0, "USR1")
    assert (end.kind, end.cause) == (Kind.REQUEUED, PREEMPTION) and not orders(fake, "scancel")

    run.run.request_cancel(run.key.job_id)  # now for this job
    run.job(run.key.job_id, 1).started(305)
    rc, end = run.finish(0, "USR1")
    assert end.kind is Kind.CANCELLED and orders(fake, "scancel", run.key.job_id)


def test_a_crash_after_an_earlier_preemption_is_a_crash(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch)
    earlier = StartKey("60", 0)
    run.started(0, earlier)
    run.run.record(Kind.SIGNAL, earlier, name="SIGUSR1", returncode=0)
    run.ended(Kind.REQUEUED, earlier, cause=PREEMPTION)
    run.started(1500).checkpoint(1500)
    rc, end = run.finish(1, None)
    assert (end.kind, end.cause) == (Kind.FAILED, "crash") and "a crash" in end.reason


def test_a_resubmission_gets_fresh_limits(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("at-time-limit")
    run = Run(tmp_path, monkeypatch, "requeue.max_restarts=1", scenario="at-time-limit")
    earlier = StartKey("60", 0)
    run.run.record(Kind.SUBMITTED, earlier)
    run.started(0, earlier).ended(Kind.REQUEUED, earlier, cause=TIME_LIMIT)
    run.started(10, StartKey("60", 1)).ended(Kind.FAILED, StartKey("60", 1), cause=TIME_LIMIT)
    run.run.record(Kind.SUBMITTED, run.key)
    run.started(20).checkpoint(80)
    assert run.finish(0, "USR1")[1].kind is Kind.REQUEUED


def test_chain_mode_submits_the_next_start(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, "requeue.mode=chain", scenario="being-preempted").started(0).checkpoint(50)
    rc, end = run.finish(0, "USR1")
    assert end.kind is Kind.REQUEUED and end.get("next_job_id") == "4242"
    [sbatch] = orders(fake, "sbatch")
    assert "--dependency=singleton" in sbatch and "--export=ALL,HPC_MM_RESTART=1" in sbatch
    assert "4242" in json.loads((run.path / "run.json").read_text())["job_ids"]


def test_the_hold_after_a_requeue_is_released_once_the_job_is_pending(tmp_path, recorded_slurm):
    """Slurm sets a requeued job's begin time about two minutes ahead when its batch script has ended;
    release-hold waits for that (the job pending with Reason=BeginTime) and sets it to now."""
    fake = recorded_slurm("preempted-requeued")
    jid = job_id("preempted-requeued")
    assert release_hold(jid, tmp_path, 1, sleep=lambda _: None) == 0
    assert fake.orders == [["scontrol", "update", f"JobId={jid}", "StartTime=now"]]
    assert RunDir(tmp_path).start(StartKey(jid, 1)).first(Kind.RELEASED) is not None

    started = recorded_slurm("running-after-requeue")  # it started already: nothing to release
    assert release_hold(jid, tmp_path, 1, sleep=lambda _: None) == 0 and started.orders == []

    refused = recorded_slurm("preempted-requeued")
    refused.refuse["update"] = f"scontrol: error: Access/permission denied for job {jid}\n"
    assert release_hold(jid, tmp_path, 1, sleep=lambda _: None) == 1  # the site forbids it: the job waits it out


def test_a_requeue_slurm_refuses_is_a_recorded_failure(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("being-preempted")
    fake.refuse["requeue"] = "Requested operation is presently disabled for job 67\n"
    rc, end = Run(tmp_path, monkeypatch, scenario="being-preempted").started(0).checkpoint(50).finish(0, "USR1")
    assert end.kind is Kind.FAILED


def test_a_requeue_by_slurm_is_recorded_once(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("preempted-requeued")
    run = Run(tmp_path, monkeypatch, scenario="preempted-requeued").checkpoint(50)
    jid = job_id("preempted-requeued")
    run.started(0, StartKey(jid, 0))
    run.run.record(Kind.SIGNAL, StartKey(jid, 0), name="SIGUSR1")
    spec = run.run.job
    for _ in range(2):
        note_requeue_by_slurm(spec, RunDir(run.path), StartKey(jid, 1))
    ended = RunDir(run.path).start(StartKey(jid, 0)).end
    assert (ended.kind, ended.cause, ended.iteration) == (Kind.REQUEUED, "slurm", 50)
    assert len([e for e in RunDir(run.path).events() if e.kind is Kind.REQUEUED]) == 1
    note_requeue_by_slurm(spec, RunDir(run.path), StartKey("99", 3))  # no such previous start: nothing
    assert len([e for e in RunDir(run.path).events() if e.kind is Kind.REQUEUED]) == 1


def test_a_batch_script_that_fails_before_the_step(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch)
    rc, end = run.finish(127, None, failed="setup line 1 failed with exit code 127")
    assert rc == 127 and (end.kind, end.cause) == (Kind.FAILED, "batch-script")
