"""The requeue policy: a table of stops and what follows from them."""

import datetime as dt

import pytest

from conftest import JOBS
from hpc_mm.run import events
from hpc_mm.train import checkpoint
from hpc_mm.slurm.requeue import (BY_SLURM, CRASH, HANG, NODE_FAILURE, PREEMPTION, PREFLIGHT, SIGNAL, TIME_LIMIT, Facts,
                                  classify, decide, note_requeue_by_slurm)
from hpc_mm.job.jobfile import load_job

NOW = dt.datetime(2026, 11, 29, 12, 0, 0)


@pytest.mark.parametrize("fields,cause", [
    ({"PreemptTime": "2026-11-29T11:59:58", "EndTime": "2026-11-29T12:00:30"}, PREEMPTION),
    ({"PreemptTime": "None", "EndTime": "2026-11-29T12:00:25"}, TIME_LIMIT),
    ({"PreemptTime": "None", "EndTime": "2026-11-29T14:00:00"}, SIGNAL),
    ({"PreemptTime": "None", "EndTime": "Unknown"}, SIGNAL),
    ({}, SIGNAL),
])
def test_classify(fields, cause):
    assert classify(fields, grace_seconds=30, now=NOW) == cause


def run_with(tmp_path, committed: int | None, requeues: list[str] = (), started_at: tuple[int, int] | None = None,
             overrides: list[str] = ()):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["requeue.max_restarts=2", f"checkpoint.dir={tmp_path / 'ckpt'}",
                                             *overrides])
    if committed:
        checkpoint.save(spec.checkpoint.dir, committed, {"iteration": committed})
    for cause in requeues:
        events.record(tmp_path, "requeued", cause=cause)
    if started_at:  # launch records the committed checkpoint at each start
        events.record(tmp_path, "started", restart=started_at[0], checkpoint=started_at[1])
    return spec


@pytest.mark.parametrize("committed,signal,restart,cause,requeues,started_at,action,words", [
    (120, None, 0, SIGNAL, [], None, "fail", "without a stop signal; training is unfinished"),
    (200, "USR1", 0, TIME_LIMIT, [], None, "complete", "training finished"),
    (120, "USR1", 0, TIME_LIMIT, [], None, "requeue", "stopped by time-limit"),
    (120, "USR1", 2, TIME_LIMIT, [TIME_LIMIT, TIME_LIMIT], (2, 100), "fail", "restart limit reached"),
    (120, "USR1", 3, TIME_LIMIT, [PREEMPTION, PREEMPTION, TIME_LIMIT], (3, 100), "requeue", "stopped by time-limit"),
    (100, "USR1", 1, TIME_LIMIT, [TIME_LIMIT], (1, 100), "fail", "no progress"),
    (None, "USR1", 0, TIME_LIMIT, [], None, "fail", "no progress"),
    (None, "USR1", 0, PREEMPTION, [], None, "requeue", "preempted"),
    (120, "TERM", 0, SIGNAL, [], None, "cancel", "scancel or the hard time limit"),
    (120, "TERM", 0, PREEMPTION, [], None, "requeue", "preempted"),  # SIGTERM-only preemption is still one
    (120, "TERM", 0, TIME_LIMIT, [], None, "cancel", "scancel or the hard time limit"),
    (120, "USR2", 0, SIGNAL, [], None, "fail", "not by requeue.signal USR1"),
    (100, "USR1", 5, PREEMPTION, [PREEMPTION] * 5, (5, 100), "requeue", "preempted"),
    (120, "USR1", 3, TIME_LIMIT, [BY_SLURM, BY_SLURM, TIME_LIMIT], (3, 100), "requeue", "stopped by time-limit"),
])
def test_decide_on_stop_signals(tmp_path, committed, signal, restart, cause, requeues, started_at, action, words):
    spec = run_with(tmp_path, committed, requeues, started_at)
    decision = decide(spec, tmp_path, Facts(returncode=0, signal=signal, cause=cause, restart=restart))
    assert (decision.action, words in decision.reason) == (action, True), decision


def test_a_finished_run_is_complete_whatever_ends_it(tmp_path):
    spec = run_with(tmp_path, 200)
    for facts in (Facts(returncode=241, signal="USR1", cause=PREEMPTION), Facts(returncode=1), Facts(returncode=0)):
        assert decide(spec, tmp_path, facts).action == "complete"


def starts(tmp_path, *checkpoints_at_start):
    for restart, at in enumerate(checkpoints_at_start):
        events.record(tmp_path, "started", restart=restart, checkpoint=at)


def test_crashes_are_retried_until_they_repeat(tmp_path):
    spec = run_with(tmp_path, 40, overrides=["requeue.on_failure=3"])
    starts(tmp_path, 0)
    first = decide(spec, tmp_path, Facts(returncode=1, restart=0, iteration=50))
    assert first.action == "requeue" and first.failure == "a crash after iteration 50"
    events.record(tmp_path, "requeued", restart=0, cause=CRASH, failure=first.failure)
    starts(tmp_path, 40)
    again = decide(spec, tmp_path, Facts(returncode=1, restart=1, iteration=50))
    assert again.action == "give-up" and "the same failure twice in a row" in again.reason
    other = decide(spec, tmp_path, Facts(returncode=1, restart=1, iteration=57))
    assert other.action == "requeue" and "retry 2 of requeue.on_failure = 3" in other.reason


def test_a_crash_without_on_failure_is_final(tmp_path):
    spec = run_with(tmp_path, 40)
    decision = decide(spec, tmp_path, Facts(returncode=1, restart=0, iteration=12))
    assert decision.action == "fail" and "requeue.on_failure = 0" in decision.reason


def test_starts_without_progress_give_up(tmp_path):
    spec = run_with(tmp_path, 100, overrides=["requeue.max_restarts=10", "requeue.max_restarts_without_progress=3"])
    for restart in range(3):
        events.record(tmp_path, "started", restart=restart, checkpoint=100)
    decision = decide(spec, tmp_path, Facts(returncode=0, signal="USR1", cause=TIME_LIMIT, restart=2))
    assert decision.action == "give-up" and "3 starts in a row moved no checkpoint" in decision.reason
    preempted = decide(spec, tmp_path, Facts(returncode=0, signal="USR1", cause=PREEMPTION, restart=2))
    assert preempted.action == "requeue"  # preemptions are not the job's doing


def test_hangs_node_failures_and_preflights(tmp_path):
    spec = run_with(tmp_path, 100)
    starts(tmp_path, 50)
    hang = {"phase": "step", "stalled_seconds": 31.0, "nodes": ["n2"],
            "blamed": [{"rank": 3, "host": "n2", "state": "T", "why": "stopped"}]}
    decision = decide(spec, tmp_path, Facts(returncode=1, hang=hang, nodes=("n1", "n2")))
    assert (decision.action, decision.cause, decision.exclude) == ("requeue", HANG, ("n2",))
    assert "stopped first: rank 3 on n2" in decision.reason
    node = decide(spec, tmp_path, Facts(returncode=1, failed_nodes=("n2",), nodes=("n1", "n2")))
    assert (node.action, node.cause, node.exclude) == ("requeue", NODE_FAILURE, ("n2",))
    local = decide(spec, tmp_path, Facts(returncode=1, nodes=("n1", "n2"), preflight_failed={"n2": ["no device"]}))
    assert (local.action, local.cause, local.exclude) == ("requeue", PREFLIGHT, ("n2",))
    everywhere = decide(spec, tmp_path, Facts(returncode=1, nodes=("n1", "n2"),
                                              preflight_failed={"n1": ["no script"], "n2": ["no script"]}))
    assert everywhere.action == "fail" and "the preflight failed on every node: no script" in everywhere.reason


def test_nothing_is_requeued_with_requeue_off(tmp_path):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["requeue.enabled=false", f"checkpoint.dir={tmp_path / 'ckpt'}"])
    decision = decide(spec, tmp_path, Facts(returncode=0, signal="USR1", cause=PREEMPTION))
    assert not decision.requeue and "requeue.enabled is false" in decision.reason


def test_requeue_by_slurm_is_recorded_once(tmp_path):
    spec = run_with(tmp_path, 50)
    events.record(tmp_path, "signal", restart=0, name="SIGUSR1")
    note_requeue_by_slurm(spec, tmp_path, 1)
    note_requeue_by_slurm(spec, tmp_path, 1)
    requeued = [e for e in events.read(tmp_path) if e["event"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["restart"] == 0 and requeued[0]["cause"] == BY_SLURM
    assert requeued[0]["iteration"] == 50
    note_requeue_by_slurm(spec, tmp_path, 0)  # a first start records nothing
    assert len([e for e in events.read(tmp_path) if e["event"] == "requeued"]) == 1


