"""The restart policy's rows for nodes, as pure functions over gathered facts (launch/requeue.py):
which nodes one fault quarantines (`quarantine_for`), and when a start begins again inside the
allocation rather than through the queue (`decide`'s last rows). The rows before them (complete,
fail, give up, cancel, requeue and their limits) are walked through `finish` in test_requeue.py."""

import dataclasses

import pytest
from test_requeue import Run

from hpc_mm.job.jobfile import load_job
from hpc_mm.launch.requeue import CRASH, HANG, PREEMPTION, Allocation, Facts, decide, quarantine_for
from hpc_mm.run.events import Kind, StartKey

from conftest import JOBS

ALLOC = Allocation(nodes=("n1", "n2", "n3"), partition="low", partition_nodes=4)


@pytest.mark.parametrize(
    "row, allocation, pointed, spec_overrides, applied, kept_in, refused, avoid",
    [
        ("quarantine off: nothing", ALLOC, ("n2",), ["fault.quarantine=false"], (), (), (), ()),
        ("one node on its own evidence", ALLOC, ("n2",), [], ("n2",), (), (), ("n2",)),
        ("several, nothing else against them: they stay in", ALLOC, ("n2", "n3"), [], (), ("n2", "n3"), (), ()),
        (
            "several, one marked down by Slurm: that one",
            dataclasses.replace(ALLOC, states={"n2": "DOWN*", "n3": "ALLOCATED"}),
            ("n2", "n3"),
            [],
            ("n2",),
            ("n3",),
            (),
            ("n2",),
        ),
        (
            "several, one drained by the site: that one",
            dataclasses.replace(ALLOC, states={"n3": "ALLOCATED+DRAIN"}),
            ("n2", "n3"),
            [],
            ("n3",),
            ("n2",),
            (),
            ("n3",),
        ),
        (
            "several, one named by an earlier fault: that one",
            dataclasses.replace(ALLOC, named=("n3",)),
            ("n2", "n3"),
            [],
            ("n3",),
            ("n2",),
            (),
            ("n3",),
        ),
        (
            "the partition would be too small: none, and why",
            dataclasses.replace(ALLOC, partition_nodes=2),
            ("n2",),
            [],
            (),
            (),
            ("n2",),
            (),
        ),
        (
            "an earlier quarantine stays, nothing new",
            dataclasses.replace(ALLOC, quarantined=("n4",), named=("n4",)),
            ("n4",),
            [],
            (),
            (),
            (),
            ("n4",),
        ),
        (
            "an earlier quarantine and a new node",
            dataclasses.replace(ALLOC, quarantined=("n4",), named=("n4",)),
            ("n2",),
            [],
            ("n2",),
            (),
            (),
            ("n2", "n4"),
        ),
    ],
)
def test_one_fault_quarantines(row, allocation, pointed, spec_overrides, applied, kept_in, refused, avoid):
    spec = load_job(JOBS / "tiny-vlm.yaml", spec_overrides)
    q = quarantine_for(spec, allocation, pointed)
    assert (q.applied, q.kept_in, q.refused, q.avoid) == (applied, kept_in, refused, avoid), row
    assert bool(q.refused_reason) == bool(refused), row


def facts(run, **kwargs):
    return Facts(start=run.key, nodes=ALLOC.nodes, **kwargs)


@pytest.mark.parametrize(
    "row, overrides, fact, allocation, action, exclude, cause",
    [
        ("a crash, nodes to spare: inside, nobody left out", ["requeue.on_failure=2"], {"returncode": 1}, ALLOC,
         "restart-inside", (), CRASH),
        ("a hang pointing at n2: inside without it", [], {"returncode": 137, "hang": {"nodes": ["n2"],
         "phase": "step", "stalled_seconds": 31.0, "blamed": []}}, ALLOC, "restart-inside", ("n2",), HANG),
        ("a crash, a node drained meanwhile: inside without it", ["requeue.on_failure=2"], {"returncode": 1},
         dataclasses.replace(ALLOC, states={"n1": "MIXED+DRAIN"}), "restart-inside", ("n1",), CRASH),
        ("the site drained n2 while it trained: inside without it, on the spare", [],
         {"returncode": -9, "leaving": {"nodes": ["n2"], "cause": "drain", "iteration": 40, "reason": "drained"}},
         dataclasses.replace(ALLOC, nodes=("n1", "n2", "n3"), states={"n2": "MIXED+DRAIN"}), "restart-inside",
         ("n2",), "drain"),
        ("a sick NPU on n1 at a checkpoint: inside without it", [],
         {"returncode": -9, "leaving": {"nodes": ["n1"], "cause": "device", "iteration": 40, "reason": "Alarm"}},
         ALLOC, "restart-inside", ("n1",), "device"),
        ("the same words from two nodes' devices: each node's own, never the job's", [],
         {"returncode": 1, "preflight_failed": {
             "n1": ["n1: device.health: NPU 0 (card 0 chip 0): npu-smi health: Health Status Alarm on n1"],
             "n2": ["n2: device.health: NPU 0 (card 0 chip 0): npu-smi health: Health Status Alarm on n2"]}},
         dataclasses.replace(ALLOC, nodes=("n1", "n2", "n3", "n4"), partition_nodes=6), "restart-inside",
         ("n1", "n2"), "preflight"),
        ("a crash, left out before: still left out", ["requeue.on_failure=2"], {"returncode": 1},
         dataclasses.replace(ALLOC, step_excluded=("n3",)), "restart-inside", ("n3",), CRASH),
        ("a node failure leaving too few healthy nodes: the queue, kept off it", [],
         {"returncode": 1, "failed_nodes": ("n2",)}, dataclasses.replace(ALLOC, nodes=("n1", "n2")), "requeue",
         ("n2",), "node-failure"),
        ("requeue.inside false: the queue", ["requeue.inside=false", "requeue.on_failure=2"], {"returncode": 1},
         ALLOC, "requeue", (), CRASH),
        ("a preemption: the queue, never inside", [], {"returncode": 0, "signal": "USR1", "cause": PREEMPTION},
         ALLOC, "requeue", (), PREEMPTION),
        ("not under Slurm: requeue as decided, no nodes", ["requeue.on_failure=2"], {"returncode": 1}, None,
         "requeue", (), CRASH),
    ],
)  # fmt: skip
def test_inside_or_through_the_queue(tmp_path, monkeypatch, row, overrides, fact, allocation, action, exclude, cause):
    run = Run(tmp_path, monkeypatch, *overrides).started(0).checkpoint(40)
    decision = decide(run.run.job, run.run, facts(run, allocation=allocation, **fact))
    assert (decision.action, decision.exclude, decision.cause) == (action, exclude, cause), (row, decision)


def test_the_policy_reads_no_slurm_and_writes_nothing(tmp_path, monkeypatch):
    """decide() is a function of its facts and the run's record: it asks Slurm nothing (a recorded
    Slurm that answers nothing would fail it) and records nothing."""
    from hpc_mm.slurm import query

    run = Run(tmp_path, monkeypatch, "requeue.on_failure=2").started(0).checkpoint(40)
    monkeypatch.setattr(query, "_run", lambda *a, **k: pytest.fail("the policy asked Slurm"))
    before = run.run.events_file.read_text()
    hang = {"nodes": ["n2", "n3"], "phase": "step", "stalled_seconds": 31.0, "blamed": []}
    decision = decide(run.run.job, run.run, facts(run, returncode=137, hang=hang, allocation=ALLOC))
    assert decision.action == "restart-inside" and decision.quarantine.kept_in == ("n2", "n3")
    assert run.run.events_file.read_text() == before
    assert [e.kind for e in run.run.reread().events()] == [Kind.STARTED] and run.key == StartKey(run.key.job_id, 0)


def test_one_rule_for_how_a_start_ended_a_teardown_error_after_the_last_checkpoint_completes(tmp_path, monkeypatch):
    """finish (under Slurm), hpc-mm local and a hand-started launch share it: training finished is a
    completion, whatever exit code the processes' teardown left (MindSpeed-MM's trainers exit without
    destroying their process group; gloo may abort then)."""
    from hpc_mm.launch.local import _record_end
    from hpc_mm.launch.requeue import training_finished

    run = Run(tmp_path, monkeypatch).started(0)
    spec = run.run.job
    assert training_finished(spec, run.run.reread()) is None
    run.checkpoint(spec.gpt.train_iters)
    assert training_finished(spec, run.run.reread()) == spec.gpt.train_iters
    assert _record_end(spec, run.run, 134, None, run.key) == 0
    end = run.run.reread().start(run.key).end
    assert end.kind is Kind.COMPLETED and end.get("returncode") == 134
    assert decide(spec, run.run.reread(), facts(run, returncode=134)).action == "complete"


# One case (or more) for every row of decide()'s table (launch/requeue.py's docstring): what the run
# holds (`earlier`: the starts before this one, as (checkpoint at start, how it ended, data)), the
# facts of this start, and the decision. A row added to the table without a case fails the walk.
def _row_cases():
    hang = {"nodes": ["n2"], "phase": "step", "stalled_seconds": 31.0, "blamed": []}
    crashed = (40, Kind.REQUEUED, {"cause": CRASH, "failure": "a crash after iteration 50"})
    quarantined = dataclasses.replace(ALLOC, quarantined=("n4",), named=("n4",))
    return {
        "training finished": [
            ([], 3000, [], {"returncode": 1, "signal": "TERM"}, None, "complete", "", ()),
        ],
        "the preflight failed": [
            ([], 40, [], {"returncode": 1, "preflight_failed": {"n2": ["no /dev/davinci0"]}}, None, "requeue",
             "preflight", ("n2",)),
            ([], 40, [], {"returncode": 1, "preflight_failed": {"n1": ["no torch_npu on n1"],
             "n2": ["no torch_npu on n2"]}}, None, "fail", "preflight", ()),
        ],
        "the step hung": [([], 40, [], {"returncode": 137, "hang": hang}, None, "requeue", "hang", ("n2",))],
        "nodes left at a checkpoint": [
            ([], 40, [], {"returncode": -9, "leaving": {"nodes": ["n2"], "cause": "drain", "iteration": 40,
             "reason": "n2: Slurm state ALLOCATED+DRAIN"}}, None, "requeue", "drain", ("n2",)),
            (["requeue.max_restarts=0"], 40, [], {"returncode": -9, "leaving": {"nodes": ["n1"], "cause": "device",
             "iteration": 40, "reason": "n1: NPU 3: npu-smi health: Health Status Alarm"}}, None, "requeue",
             "device", ("n1",)),
        ],
        "a node failed": [
            ([], 40, [], {"returncode": 1, "failed_nodes": ("n2",)}, None, "requeue", "node-failure", ("n2",)),
        ],
        "a stop signal": [
            ([], 40, [], {"returncode": 0, "signal": "USR1", "cause": PREEMPTION}, None, "requeue", "preemption", ()),
            ([], 40, [], {"returncode": 0, "signal": "TERM"}, None, "cancel", "signal", ()),
            ([], 40, [], {"returncode": 0, "signal": "USR1", "cause": "time-limit"}, None, "requeue", "time-limit", ()),
            ([], 0, [], {"returncode": 0, "signal": "USR1", "cause": "time-limit"}, None, "fail", "time-limit", ()),
            (["requeue.max_restarts=0"], 40, [], {"returncode": 0, "signal": "USR1"}, None, "fail", "signal", ()),
            ([], 40, [], {"returncode": 0, "signal": "INT"}, None, "fail", "signal", ()),
        ],
        "the entry's own error": [
            (["requeue.on_failure=3"], 40, [], {"returncode": 1, "error": "gpt: the schedule changed"}, None, "fail",
             "error", ()),
        ],
        "a crash": [
            (["requeue.on_failure=1"], 40, [], {"returncode": 1, "iteration": 50}, None, "requeue", CRASH, ()),
            ([], 40, [], {"returncode": 1, "iteration": 50}, None, "fail", CRASH, ()),
            (["requeue.on_failure=3"], 40, [crashed], {"returncode": 1, "iteration": 50}, None, "give-up", CRASH, ()),
        ],
        "an exit 0 with training unfinished": [([], 40, [], {"returncode": 0}, None, "fail", CRASH, ())],
        "requeue off": [
            (["requeue.enabled=false"], 40, [], {"returncode": 0, "signal": "USR1", "cause": PREEMPTION}, None, "fail",
             "preemption", ()),
        ],
        "no progress": [
            (["requeue.max_restarts_without_progress=2"], 40, [(40, Kind.REQUEUED, {"cause": HANG})],
             {"returncode": 137, "hang": hang}, None, "give-up", "hang", ()),
            (["requeue.max_restarts_without_progress=1"], 40, [], {"returncode": 0, "signal": "USR1",
             "cause": PREEMPTION}, None, "requeue", "preemption", ()),
        ],
        "quarantine": [
            ([], 40, [], {"returncode": 137, "hang": hang}, ALLOC, "restart-inside", "hang", ("n2",)),
            ([], 40, [], {"returncode": 137, "hang": hang}, dataclasses.replace(ALLOC, partition_nodes=2),
             "restart-inside", "hang", ()),  # the partition too small: no quarantine, nobody left out
        ],
        "restart inside": [
            (["requeue.on_failure=2"], 40, [], {"returncode": 1}, ALLOC, "restart-inside", CRASH, ()),
            (["requeue.on_failure=2", "fault.straggler_exclude=true"], 40, [], {"returncode": 1, "stragglers": ("n2",)},
             ALLOC, "restart-inside", CRASH, ("n2",)),
            (["requeue.on_failure=2"], 40, [], {"returncode": 1, "stragglers": ("n2",)}, ALLOC, "restart-inside", CRASH,
             ()),
        ],
        "through the queue": [
            ([], 40, [], {"returncode": 0, "signal": "USR1", "cause": PREEMPTION}, quarantined, "requeue",
             "preemption", ("n4",)),
            (["requeue.inside=false"], 40, [], {"returncode": 137, "hang": hang}, ALLOC, "requeue", "hang", ("n2",)),
        ],
    }  # fmt: skip


def _table_rows() -> list[str]:
    from hpc_mm.launch import requeue

    return [line.strip()[2:].split(":")[0] for line in requeue.__doc__.splitlines() if line.startswith("  - ")]


def test_the_table_has_a_case_for_every_row_and_no_case_without_a_row():
    assert _table_rows() == list(_row_cases())


@pytest.mark.parametrize(
    "row, case", [(row, case) for row, cases in _row_cases().items() for case in cases], ids=lambda v: str(v)[:40]
)
def test_every_row_of_the_table(tmp_path, monkeypatch, row, case):
    overrides, checkpoint, earlier, fact, allocation, action, cause, exclude = case
    run = Run(tmp_path, monkeypatch, *overrides)
    jid = run.key.job_id
    for restart, (at, kind, data) in enumerate(earlier):
        run.started(at, StartKey(jid, restart)).ended(kind, StartKey(jid, restart), **data)
    run.job(jid, len(earlier)).started(earlier[-1][0] if earlier else 0)  # this start, from where the last began
    if checkpoint:
        run.checkpoint(checkpoint)
    decision = decide(run.run.job, run.run.reread(), facts(run, allocation=allocation, **fact))
    assert (decision.action, decision.cause, decision.exclude) == (action, cause, exclude), (row, decision)
