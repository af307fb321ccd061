"""The requeue policy: a table of stops and what follows from them."""

import datetime as dt

import pytest

from conftest import JOBS
from hpc_mm.run import events
from hpc_mm.train import checkpoint
from hpc_mm.slurm.requeue import BY_SLURM, PREEMPTION, SIGNAL, TIME_LIMIT, classify, decide, note_requeue_by_slurm
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


def run_with(tmp_path, committed: int | None, requeues: list[str] = (), started_at: tuple[int, int] | None = None):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["requeue.max_restarts=2", f"checkpoint.dir={tmp_path / 'ckpt'}"])
    if committed:
        checkpoint.save(spec.checkpoint.dir, committed, {"iteration": committed})
    for cause in requeues:
        events.record(tmp_path, "requeued", cause=cause)
    if started_at:  # launch records the committed checkpoint at each start
        events.record(tmp_path, "started", restart=started_at[0], checkpoint=started_at[1])
    return spec


@pytest.mark.parametrize("committed,signal,restart,cause,requeues,started_at,requeue,words", [
    (120, None, 0, SIGNAL, [], None, False, "without a stop signal"),
    (200, "USR1", 0, TIME_LIMIT, [], None, False, "training finished"),
    (120, "USR1", 0, TIME_LIMIT, [], None, True, "stopped by time-limit"),
    (120, "USR1", 2, TIME_LIMIT, [TIME_LIMIT, TIME_LIMIT], (2, 100), False, "restart limit reached"),
    (120, "USR1", 3, TIME_LIMIT, [PREEMPTION, PREEMPTION, TIME_LIMIT], (3, 100), True, "stopped by time-limit"),
    (100, "USR1", 1, TIME_LIMIT, [TIME_LIMIT], (1, 100), False, "no progress"),
    (None, "USR1", 0, TIME_LIMIT, [], None, False, "no progress"),
    (None, "USR1", 0, PREEMPTION, [], None, True, "preempted"),
    (120, "TERM", 0, SIGNAL, [], None, False, "scancel or the hard time limit"),
    (120, "TERM", 0, PREEMPTION, [], None, True, "preempted"),  # SIGTERM-only preemption is still one
    (120, "TERM", 0, TIME_LIMIT, [], None, False, "scancel or the hard time limit"),
    (100, "USR1", 5, PREEMPTION, [PREEMPTION] * 5, (5, 100), True, "preempted"),
    (120, "USR1", 3, TIME_LIMIT, [BY_SLURM, BY_SLURM, TIME_LIMIT], (3, 100), True, "stopped by time-limit"),
])
def test_decide(tmp_path, committed, signal, restart, cause, requeues, started_at, requeue, words):
    spec = run_with(tmp_path, committed, requeues, started_at)
    decision = decide(spec, tmp_path, signal, restart, cause)
    assert decision.requeue is requeue and words in decision.reason


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


def test_nothing_is_requeued_with_requeue_off(tmp_path):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["requeue.enabled=false", f"checkpoint.dir={tmp_path / 'ckpt'}"])
    decision = decide(spec, tmp_path, "USR1", 0, PREEMPTION)
    assert not decision.requeue and "requeue.enabled is false" in decision.reason
