"""Notifications: a real HTTP receiver on this machine, a receiver that never answers, a command;
delivered by `finish` as the batch script runs it (recorded Slurm answers), never longer than the
job's timeout, the webhook's URL never written down."""

import json
import socket

import pytest
from receiver import Receiver
from test_requeue import Run

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import notify
from hpc_mm.run.events import Kind

from conftest import JOBS


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def silent():
    """A webhook that accepts the connection and never answers (a hung proxy)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    s.close()


def test_finish_sends_the_terminal_event_with_the_runs_numbers(tmp_path, monkeypatch, recorded_slurm, receiver):
    recorded_slurm("completed")
    run = Run(tmp_path, monkeypatch, f"notify.webhook={receiver.url}", scenario="completed")
    run.checkpoint(3000).started(0)
    rc, end = run.finish(0)
    assert end.kind is Kind.COMPLETED
    [body] = receiver.bodies
    assert body["event"] == "completed" and body["job_id"] == run.key.job_id and body["run"] == "tiny-vlm"
    assert body["log"].endswith(".batch.out") and "completed" in body["text"]
    [said] = notify.delivered(run.path)
    assert said["ok"] and said["to"] == "webhook" and said["event"] == "completed"
    assert "SECRET-TOKEN" not in run.run.notifications_file.read_text()


def test_events_the_job_did_not_pick_are_not_sent(tmp_path, monkeypatch, recorded_slurm, receiver):
    recorded_slurm("being-preempted")
    run = Run(tmp_path, monkeypatch, f"notify.webhook={receiver.url}", scenario="being-preempted")
    run.checkpoint(100).started(0)
    run.finish(0, "USR1")
    assert receiver.bodies == []  # requeued is not among the default events
    picked = ("notify.on=[requeued]", f"notify.webhook={receiver.url}")
    run2 = Run(tmp_path / "b", monkeypatch, *picked, scenario="being-preempted")
    run2.checkpoint(100).started(0)
    run2.finish(0, "USR1")
    assert [b["event"] for b in receiver.bodies] == ["requeued"]
    assert receiver.bodies[0]["cause"] == "preemption" and receiver.bodies[0]["iteration"] == 100


def test_a_receiver_that_never_answers_holds_the_end_up_for_the_timeout_only(tmp_path, silent):
    spec = load_job(JOBS / "tiny-vlm.yaml", [f"notify.webhook={silent}", "notify.timeout_seconds=1.5"])
    run = _rundir(tmp_path, spec)
    event = run.record(Kind.FAILED, None, reason="boom")
    [said] = notify.deliver(run, [event], spec)
    assert not said["ok"] and "timed out" in said["error"]
    assert said["seconds"] is None or said["seconds"] <= 1.5 + 0.5


def test_a_refused_connection_and_a_failing_command_are_recorded_not_raised(tmp_path):
    spec = load_job(
        JOBS / "tiny-vlm.yaml",
        ["notify.webhook=http://127.0.0.1:9/x", "notify.command='echo oops >&2; exit 3'"],
    )
    run = _rundir(tmp_path, spec)
    results = notify.deliver(run, [run.record(Kind.GAVE_UP, None, reason="r")], spec)
    by = {r["to"]: r for r in results}
    assert not by["webhook"]["ok"] and "127.0.0.1" in by["webhook"]["error"]
    assert by["command"] == {**by["command"], "ok": False, "error": "exit 3: oops"}


def test_the_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path):
    out = tmp_path / "got"
    spec = load_job(
        JOBS / "tiny-vlm.yaml",
        [f"notify.command='cat > {out}; echo \"$HPC_MM_EVENT $HPC_MM_CAUSE\" >> {out}'"],
    )
    run = _rundir(tmp_path, spec)
    [said] = notify.deliver(run, [run.record(Kind.HANG, None, cause="hang", iteration=7)], spec)
    assert said["ok"]
    body, env_line = out.read_text().rsplit("}", 1)
    assert json.loads(body + "}")["iteration"] == 7 and env_line.strip() == "hang hang"


def test_the_webhook_may_come_from_the_environment(tmp_path, receiver, monkeypatch):
    spec = load_job(JOBS / "tiny-vlm.yaml", ["notify.webhook=env:MY_HOOK"])
    run = _rundir(tmp_path, spec)
    [missing] = notify.deliver(run, [run.record(Kind.FAILED, None)], spec)
    assert not missing["ok"] and "MY_HOOK is not set" in missing["error"]
    monkeypatch.setenv("MY_HOOK", receiver.url)
    [said] = notify.deliver(run, [run.record(Kind.FAILED, None)], spec)
    assert said["ok"] and receiver.bodies[0]["event"] == "failed"


@pytest.mark.parametrize(
    "setting,field",
    [
        ("notify.webhook=slack.com/x", "notify.webhook"),
        ("notify.on=[complete]", "notify.on[0]"),
        ("notify.timeout_seconds=30", "notify.timeout_seconds"),
        ("notify.on=completed", "notify.on"),
        ("notify.command=5", "notify.command"),
        ("notify.webhook=https://h.example.org:0/x", "notify.webhook"),
        ('notify.webhook="env:HOOK\\n"', "notify.webhook"),
    ],
)
def test_bad_notify_settings_are_one_line(setting, field):
    with pytest.raises(UserError) as exc:
        load_job(JOBS / "tiny-vlm.yaml", [setting])
    assert [p.field for p in exc.value.problems] == [field]


def _rundir(tmp_path, spec):
    from hpc_mm.run import layout
    from hpc_mm.run.rundir import RunDir

    layout.create(layout.plan_run(spec, tmp_path / "run"))
    return RunDir(tmp_path / "run")


def test_a_command_past_its_timeout_is_ended_with_its_children_not_left_running(tmp_path, silent):
    """Webhook and command share the deadline; a slow webhook leaves the command no time, and the
    command (and what it started) must not outlive the delivery."""
    import os
    import time

    marker = tmp_path / "still-running"
    nap = f"3.{os.getpid():07d}"  # this test's own sleep, told apart from any other on the machine
    spec = load_job(
        JOBS / "tiny-vlm.yaml",
        [
            f"notify.webhook={silent}",
            f"notify.command='sleep {nap}; touch {marker}'",
            "notify.timeout_seconds=1",
        ],
    )
    run = _rundir(tmp_path, spec)
    said = notify.deliver(run, [run.record(Kind.FAILED, None, reason="boom")], spec)
    assert {s["to"]: s["error"] for s in said} == {"webhook": "timed out", "command": "timed out"}
    time.sleep(3.5)
    assert not marker.exists()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(f"sleep {nap}")]


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_manifest_that_names_files_outside_its_checkpoint_proves_nothing(tmp_path):
    import json
    import os

    from hpc_mm.run import checkpoints

    folder = checkpoints.iter_dir(tmp_path, 200)
    (folder / "mp_rank_00").mkdir(parents=True)
    (folder / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"truncated")
    checkpoints.write_tracker(tmp_path, 200)
    for name in ("/etc/hostname", "../../etc/hostname", "/dev/zero"):
        (folder / "manifest.json").write_text(json.dumps({"files": {name: {"size": os.stat("/etc/hostname").st_size}}}))
        assert not checkpoints.verify(tmp_path, 200, deep=True).ok, name
        assert checkpoints.latest_whole(tmp_path) is None
    (folder / "link").symlink_to("/dev/zero")
    (folder / "manifest.json").write_text(json.dumps({"files": {"link": {"size": 0}}}))
    assert "not a regular file" in checkpoints.verify(tmp_path, 200, deep=True).detail
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("²")
    assert checkpoints.latest_iteration(tmp_path) is None
