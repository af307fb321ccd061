"""What query.py makes of Slurm's answers, recorded on the test cluster (tests/recorded/): one
`SlurmJob`, whichever command answered; and the orders it gives."""

import pytest
from recorded.slurm import job_id

from hpc_mm.slurm import query
from hpc_mm.slurm.jobs import JobState


@pytest.mark.parametrize(
    "scenario,state,source,reason",
    [
        ("running", JobState.RUNNING, "sacct", None),
        ("pending-resources", JobState.PENDING, "scontrol", "Resources"),
        ("pending-begintime", JobState.PENDING, "scontrol", "BeginTime"),
        ("pending-held", JobState.PENDING, "scontrol", "JobHeldUser"),
        ("array-task-pending", JobState.PENDING, "scontrol", "Resources"),
        ("preempted-requeued", JobState.REQUEUED, "sacct", None),  # sacct says REQUEUED; squeue and scontrol PENDING
        ("completed", JobState.COMPLETED, "sacct", None),
        ("failed", JobState.FAILED, "sacct", None),
        ("cancelled", JobState.CANCELLED, "sacct", None),  # sacct writes "CANCELLED by 0"
        ("timeout", JobState.TIMEOUT, "sacct", None),
        ("unknown", JobState.UNKNOWN, None, None),
    ],
)
def test_one_job(recorded_slurm, scenario, state, source, reason):
    recorded_slurm(scenario)
    found = query.job(job_id(scenario))
    assert (found.state, found.source) == (state, source)
    if source == "scontrol":
        assert found.reason == reason
    assert found.known is (source is not None)
    assert found.ended is state.ended


def test_many_jobs_at_once(recorded_slurm):
    recorded_slurm("pending-begintime", "running", "preempted-requeued", "failed", "timeout")
    ids = [job_id(n) for n in ("pending-begintime", "running", "preempted-requeued", "failed", "timeout", "unknown")]
    found = query.jobs(ids)
    assert found[job_id("pending-begintime")].reason == "BeginTime"
    assert found[job_id("running")].state is JobState.RUNNING and found[job_id("running")].nodes == 4
    requeued = found[job_id("preempted-requeued")]
    assert (requeued.state, requeued.reason, requeued.restarts) == (JobState.PENDING, "BeginTime", 1)
    assert found[job_id("failed")].exit_code == "3:0" and found[job_id("timeout")].state is JobState.TIMEOUT
    assert found[job_id("timeout")].elapsed_seconds > 60
    assert job_id("unknown") not in found


def test_what_finish_asks_at_a_stop(recorded_slurm):
    recorded_slurm("being-preempted", "at-time-limit")
    preempted = query.show_job(job_id("being-preempted"))
    assert preempted.preempt_time and preempted.end_time and preempted.partition == "low"
    at_limit = query.show_job(job_id("at-time-limit"))
    assert at_limit.preempt_time is None and at_limit.end_time


def test_the_cluster(recorded_slurm):
    recorded_slurm()
    assert query.partition_nodes("low") == 4
    assert query.node_states(["n1", "n2"]) == {"n1": "IDLE", "n2": "IDLE"}


def test_a_controller_that_does_not_answer(recorded_slurm):
    recorded_slurm("running", down=True)
    with query.patience(0):  # asked once each (asking again: tests/unit/test_inside.py)
        found = query.job(job_id("running"))
        assert not found.known and found.state is JobState.UNKNOWN
        assert query.jobs([job_id("running")]) == {}
        assert query.requeue("1") == (False, "scontrol did not answer")


def test_orders_and_their_answers(recorded_slurm):
    fake = recorded_slurm()
    assert query.release_hold("67") == (True, "")
    assert query.exclude_nodes("67", ["n2", "n3"]) == (True, "")
    assert fake.orders == [
        ["scontrol", "update", "JobId=67", "StartTime=now"],
        ["scontrol", "update", "JobId=67", "ExcNodeList=n2,n3"],
    ]
    fake.refuse["requeue"] = "Invalid job id specified for job 999999\n"
    assert query.requeue("999999") == (False, "Invalid job id specified for job 999999")
    # asked again after no answer, the requeue finds the job pending: the first request went through
    fake.refuse["requeue"] = "Job is pending execution for job 67\n"
    assert query.requeue("67") == (True, "")


@pytest.mark.parametrize(
    "text,state",
    [
        ("CANCELLED by 0", JobState.CANCELLED),
        ("COMPLETING+", JobState.COMPLETING),
        ("", JobState.UNKNOWN),
        ("WHATEVER", JobState.UNKNOWN),
    ],
)
def test_state_names(text, state):
    assert JobState.parse(text) is state
