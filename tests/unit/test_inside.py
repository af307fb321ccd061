"""Restarts inside the allocation, the preflight's blame, and a controller that does not answer:
through `hpc-mm finish` itself, against Slurm as the test cluster answered (tests/recorded/)."""

from recorded.slurm import job_id
from test_requeue import Run, _metric, orders

from hpc_mm.launch.finish import next_restart
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import PreflightResult
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query


def spare_run(tmp_path, monkeypatch, *overrides, nodes="n[1-3]", spares=1):
    run = Run(tmp_path, monkeypatch, f"slurm.spare_nodes={spares}", *overrides)
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodes)
    return run


def exclude_file(run) -> str:
    return (run.path / f".step-exclude-{run.key.job_id}").read_text()


def test_a_crash_restarts_inside_the_allocation(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, "requeue.on_failure=2").started(0).checkpoint(40)
    run.run.write_metric(_metric(47))
    rc, end = run.finish(1, None)
    assert rc == 75 and (end.kind, end.cause, end.get("exclude")) == (Kind.RESTARTED, "crash", [])
    assert end.get("lost_iterations") == 7 and exclude_file(run) == ""
    assert not orders(fake, "requeue") and not run.released


def test_a_hang_restarts_inside_without_the_blamed_node_on_a_spare(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch).started(50).checkpoint(100).hung(1)
    rc, end = run.finish(137, None)
    assert rc == 75 and (end.kind, end.cause, end.get("exclude")) == (Kind.RESTARTED, "hang", ["n2"])
    assert exclude_file(run) == "n2" and not orders(fake, "requeue")
    assert RunDir(run.path).start(run.key).last(Kind.QUARANTINED).get("nodes") == ["n2"]
    # the next start (restart 1) is numbered after the one inside
    monkeypatch.setenv("HPC_MM_RESTART", "0")
    assert next_restart(run.path) == 1


def test_one_fault_blaming_two_nodes_leaves_out_only_those_with_more_evidence(tmp_path, monkeypatch, recorded_slurm):
    """A hang whose stopped ranks sit on two nodes: neither is left out on that alone (nothing else
    points at them), and the step starts again on the same nodes."""
    fake = recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, "slurm.spare_nodes=2", nodes="n[1-4]").started(50).checkpoint(100)
    blamed = [{"rank": r, "host": h, "node": r, "state": "D", "why": "stopped"} for r, h in ((1, "n2"), (2, "n3"))]
    run.run.record(Kind.HANG, run.key, phase="step", stalled_seconds=31.0, nodes=["n2", "n3"], blamed=blamed)
    rc, end = run.finish(137, None)
    assert rc == 75 and (end.kind, end.get("exclude")) == (Kind.RESTARTED, [])
    said = RunDir(run.path).start(run.key).last(Kind.QUARANTINED)
    assert said.get("applied") is False and said.get("nodes") == ["n2", "n3"]
    assert not orders(fake, "ExcNodeList")
    # the same two again in the next start: now there is a second piece of evidence
    run.job(run.key.job_id, 1)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-4]")
    run.started(100)
    run.run.record(Kind.HANG, run.key, phase="step", stalled_seconds=31.0, nodes=["n2", "n3"], blamed=blamed)
    rc, end = run.finish(137, None)
    assert (end.kind, end.get("exclude")) == (Kind.RESTARTED, ["n2", "n3"])


def test_without_healthy_nodes_left_it_goes_back_through_the_queue(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, spares=0, nodes="n[1-2]").started(50).checkpoint(100)
    run.run.batch_log("tiny-vlm", run.key.job_id).write_text(
        f"hpc-mm: job {run.key.job_id} restart 0 on n[1-2] started now\nsrun: error: Node failure on n2\n"
    )
    rc, end = run.finish(1, None)
    assert rc == 0 and (end.kind, end.cause, end.get("exclude")) == (Kind.REQUEUED, "node-failure", ["n2"])
    assert orders(fake, "requeue")


def test_a_preemption_still_leaves(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, "slurm.spare_nodes=1", scenario="being-preempted")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-3]")
    rc, end = run.started(40).checkpoint(60).finish(0, "USR1")
    assert (end.kind, end.cause) == (Kind.REQUEUED, "preemption") and orders(fake, "requeue")


def test_restarts_inside_count_against_the_limits(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    jid = job_id("running-low")
    run = spare_run(tmp_path, monkeypatch, "requeue.on_failure=1").started(0).checkpoint(40)
    run.run.write_metric(_metric(45, at=2e9))
    assert run.finish(1, None)[1].kind is Kind.RESTARTED
    run.job(jid, 1).started(40, StartKey(jid, 1))
    run.run.write_metric(_metric(52, at=2e9 + 10))
    rc, end = run.finish(1, None)
    assert end.kind is Kind.FAILED and "requeue.on_failure = 1" in end.reason


def test_next_restart_counts_the_starts_made_inside(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    jid = job_id("running-low")
    run = Run(tmp_path, monkeypatch)
    assert next_restart(run.path) == 0
    for restart in (0, 1, 2):  # three starts inside the first allocation
        run.started(0, StartKey(jid, restart)).ended(Kind.RESTARTED, StartKey(jid, restart), cause="crash")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # then Slurm requeued it once
    monkeypatch.delenv("HPC_MM_RESTART", raising=False)
    assert next_restart(run.path) == 3


# ---------------------------------------------------------------- the preflight blames only on evidence
def preflight(run, node, problems=(), **seen):
    run.run.write_preflight(run.key, PreflightResult(node, tuple(problems), 0.5, **seen))


def test_a_refused_connection_points_at_the_master_not_at_the_node(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, spares=1, nodes="n[1-3]")
    preflight(run, "n1", listening=True, accepted=0)
    preflight(run, "n2", unreached="ECONNREFUSED", unreached_problem="n2 cannot reach the master n1:15045")
    rc, end = run.finish(1, None, preflight_failed=True)
    assert end.kind is Kind.RESTARTED and end.get("exclude") == ["n1"], end.data  # the listener's side


def test_no_answer_with_nobody_else_through_blames_nobody(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, spares=1, nodes="n[1-3]")
    preflight(run, "n1", listening=True, accepted=0)
    preflight(run, "n2", unreached="ETIMEDOUT", unreached_problem="n2 cannot reach the master n1:15045")
    rc, end = run.finish(1, None, preflight_failed=True)
    assert end.kind is Kind.RESTARTED and end.get("exclude") == [] and "blaming no node" in end.reason
    assert not RunDir(run.path).start(run.key).all(Kind.QUARANTINED) and not orders(fake, "ExcNodeList")


def test_preflights_that_keep_failing_blaming_nobody_give_up(tmp_path, monkeypatch, recorded_slurm):
    """Starts that never train move no checkpoint: after requeue.max_restarts_without_progress of
    them in a row the job gives up, instead of starting again inside its allocation for ever."""
    recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, spares=1, nodes="n[1-3]")
    kinds = []
    for restart in range(4):
        run.job(run.key.job_id, restart)
        monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-3]")
        preflight(run, "n1", listening=True, accepted=0)  # the other node never ran its check
        kinds.append(run.finish(1, None, preflight_failed=True)[1].kind)
        if kinds[-1] is not Kind.RESTARTED:
            break
    assert kinds == [Kind.RESTARTED, Kind.RESTARTED, Kind.GAVE_UP]


def test_no_answer_while_others_got_through_blames_the_node(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = Run(tmp_path, monkeypatch, "slurm.nodes=3", "slurm.spare_nodes=1", "gpt.global_batch_size=48")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-4]")
    preflight(run, "n1", listening=True, accepted=1)
    preflight(run, "n2", unreached="ETIMEDOUT", unreached_problem="n2 cannot reach the master n1:15045")
    preflight(run, "n3")
    rc, end = run.finish(1, None, preflight_failed=True)
    assert end.kind is Kind.RESTARTED and end.get("exclude") == ["n2"], end.data


def test_the_same_problem_on_every_node_fails_the_job(tmp_path, monkeypatch, recorded_slurm):
    recorded_slurm("running-low")
    run = spare_run(tmp_path, monkeypatch, spares=1, nodes="n[1-3]")
    for node in ("n1", "n2"):
        preflight(run, node, [f"{node}: entry.script: /x/pretrain_vlm.py does not exist on {node}"])
    rc, end = run.finish(1, None, preflight_failed=True)
    assert end.kind is Kind.FAILED and "the preflight failed on every node" in end.reason


# ---------------------------------------------------------------- a controller that does not answer
def test_a_requeue_waits_for_the_controller(tmp_path, monkeypatch, recorded_slurm, capsys):
    fake = recorded_slurm("being-preempted")
    fake.unreachable = 3  # the next three questions find no controller
    monkeypatch.setattr(query.time, "sleep", lambda s: None)
    with query.patience(60):
        rc, end = Run(tmp_path, monkeypatch, scenario="being-preempted").started(0).checkpoint(50).finish(0, "USR1")
    assert end.kind is Kind.REQUEUED and orders(fake, "requeue")
    assert "asking again" in capsys.readouterr().err


def test_a_requeue_that_never_gets_through_is_one_failure(tmp_path, monkeypatch, recorded_slurm):
    fake = recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, scenario="being-preempted").started(0).checkpoint(50)
    fake.unreachable = 10_000
    monkeypatch.setattr(query.time, "sleep", lambda s: None)
    with query.patience(5):
        rc, end = run.finish(0, "USR1")
    ends = [e for e in RunDir(run.path).start(run.key).events if e.kind.terminal]
    assert len(ends) == 1 and end.kind is Kind.FAILED and "the requeue failed" in end.reason
    assert "Unable to contact slurm controller" in end.reason


def test_one_fault_is_one_quarantine_decision_whichever_way_the_job_goes_on(tmp_path, monkeypatch, recorded_slurm):
    """A hang blaming n1 and n2 of a 2-node job without spares, n2 marked DOWN: n2 is left out, n1 stays
    in. Too few nodes are left inside, so the job is requeued: n1 must not be quarantined then on the
    strength of the "stays in" record the same fault just wrote."""
    fake = recorded_slurm("running-low")
    monkeypatch.setattr(query, "node_states", lambda nodes: {n: "DOWN" if n == "n2" else "ALLOCATED" for n in nodes})
    run = spare_run(tmp_path, monkeypatch, spares=0, nodes="n[1-2]").started(50).checkpoint(100)
    blamed = [{"rank": r, "host": h, "node": r, "state": "T", "why": "stopped"} for r, h in ((0, "n1"), (1, "n2"))]
    run.run.record(Kind.HANG, run.key, phase="step", stalled_seconds=31.0, nodes=["n1", "n2"], blamed=blamed)
    rc, end = run.finish(137, None)
    assert (end.kind, end.get("exclude")) == (Kind.REQUEUED, ["n2"])
    said = [e for e in RunDir(run.path).events() if e.kind is Kind.QUARANTINED]
    assert [(e.get("nodes"), e.get("applied")) for e in said] == [(["n1"], False), (["n2"], True)]
    assert [w for o in fake.orders for w in o if w.startswith("ExcNodeList")] == ["ExcNodeList=n2"]
