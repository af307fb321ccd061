"""What people read while operating runs: numbers without None or 17 digits, the progress line
(in place on a terminal, plain lines otherwise), restarts counted before the next start, the
metrics tail that reads each byte once, and the sbatch-style shortcuts."""

import io
import json

import pytest

from hpc_mm.cli.parser import build_parser, shortcut_overrides
from hpc_mm.run import metrics, timeline
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.follow import Follower
from hpc_mm.run.format import duration, number, text
from hpc_mm.run.rundir import RunDir


@pytest.mark.parametrize(
    "seconds,shown",
    [(None, "-"), (float("nan"), "-"), (-1, "-"), (0, "0s"), (59.6, "1m00s"), (3725, "1h02m"), (90061, "1d01h")],
)
def test_duration(seconds, shown):
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    "value,shown",
    [
        (None, "-"),
        (True, "-"),
        (float("inf"), "-"),
        (0.30000000000000004, "0.3"),
        (3.14159265358979, "3.142"),
        (12, "12"),
        (1.0e-7, "1e-07"),
    ],
)
def test_number(value, shown):
    assert number(value) == shown


def test_text():
    assert (text(None), text(""), text(0), text("x")) == ("-", "-", "0", "x")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def write_rows(run_dir, start, stop, t0=1000.0):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for i in range(start, stop):
            f.write(json.dumps({"iteration": i, "loss": 1.0 / i, "time": t0 + i * 0.5}) + "\n")


def test_progress_updates_in_place_on_a_terminal(tmp_path):
    stream = Terminal()
    follower = Follower(tmp_path, 100, stream=stream, state="running")
    follower.update()
    write_rows(tmp_path, 1, 21)
    follower.update()
    follower.close()
    out = stream.getvalue()
    assert out.count("\r") == 2 and out.count("\n") == 1 and "\x1b[K" in out
    last = out.split("\r")[-1]
    assert "iteration 20/100" in last and "loss 0.05" in last and "2.0 it/s" in last and "ETA 40s" in last
    assert "restarts 0" in last and "None" not in out


def test_progress_is_plain_lines_elsewhere(tmp_path):
    stream = io.StringIO()
    follower = Follower(tmp_path, 100, stream=stream, state="running")
    follower.update()
    write_rows(tmp_path, 1, 11)
    follower.update()  # within PLAIN_EVERY of the last line: nothing
    follower.update("preempting")  # a change of state: a line now
    write_rows(tmp_path, 11, 21)
    follower.close()  # the last state
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    assert lines[0].endswith("starting | restarts 0") and lines[1].startswith("preempting | iteration 10/100")
    assert "iteration 20/100" in lines[2]


def test_restarts_count_a_requeue_before_the_next_start(tmp_path):
    run = RunDir(tmp_path)
    assert timeline.restarts(run.starts()) == (0, None)
    run.record(Kind.STARTED, StartKey("7", 0))
    assert timeline.restarts(run.starts()) == (0, None)
    run.record(Kind.REQUEUED, StartKey("7", 0), cause="preemption")
    assert timeline.restarts(run.starts()) == (1, "preemption")
    run.record(Kind.RELEASED, StartKey("7", 1))  # its hold lifted: the next start, not begun yet
    assert timeline.restarts(run.starts()) == (1, "preemption")
    run.record(Kind.STARTED, StartKey("7", 1))
    assert timeline.restarts(run.starts()) == (1, "preemption")
    run.record(Kind.CANCELLED, StartKey("7", 1))
    run.record(Kind.SUBMITTED, StartKey("9", 0))  # a new job in the same run directory
    assert timeline.restarts(run.starts()) == (1, "preemption")  # it has not started yet
    run.record(Kind.STARTED, StartKey("9", 0))
    assert timeline.restarts(run.starts()) == (2, "resubmitted")


def test_metrics_tail_waits_for_whole_lines(tmp_path):
    tail = metrics.Tail(tmp_path / "metrics.jsonl")
    assert tail.read() == []  # no file yet
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 2.0}\n{"iteration": 2, "lo')
    assert [r.iteration for r in tail.read()] == [1]
    with open(path, "a") as f:
        f.write('ss": 1.5}\nnot json\n{"iteration": "3", "loss": 1}\n{"iteration": 4, "loss": 1.0}\n')
    assert [r.iteration for r in tail.read()] == [1, 2, 4]
    assert tail.read() == RunDir(tmp_path).metrics()


def test_sbatch_shortcuts_become_job_file_values():
    args = build_parser().parse_args(
        [
            "submit",
            "job.yaml",
            "-N",
            "3",
            "-p",
            "gpu",
            "-t",
            "1-00:00:00",
            "-A",
            "proj",
            "-q",
            "high",
            "--gpus-per-node",
            "a100:4",
        ]
    )
    assert args.nodes == 3
    assert shortcut_overrides(args) == [
        'slurm.partition="gpu"',
        'slurm.time="1-00:00:00"',
        'slurm.account="proj"',
        'slurm.qos="high"',
        'slurm.gpus_per_node="a100:4"',
    ]
    assert shortcut_overrides(build_parser().parse_args(["render", "job.yaml"])) == []


def test_shortcuts_reach_the_script_and_bad_ones_name_the_field(tmp_path, capsys):
    from hpc_mm.cli import main

    from conftest import JOBS

    assert (
        main(
            [
                "render",
                str(JOBS / "tiny-vlm.yaml"),
                "--run-dir",
                str(tmp_path / "r"),
                "-N",
                "4",
                "-p",
                "high",
                "-t",
                "25:00",
                "-q",
                "normal",
            ]
        )
        == 0
    )
    script = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --partition=high", "#SBATCH --time=25:00", "#SBATCH --qos=normal"):
        assert line in script.splitlines()
    assert main(["render", str(JOBS / "tiny-vlm.yaml"), "--run-dir", str(tmp_path / "r"), "-t", "1:99:00"]) == 2
    assert capsys.readouterr().err.startswith("error: slurm.time: '1:99:00': 99 minutes is out of range")


def test_status_without_runs_is_one_line(tmp_path, monkeypatch, capsys):
    from hpc_mm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2
    assert (
        capsys.readouterr().err == "error: RUN_DIR: no runs under ./runs (hint: submit one, or pass a run directory)\n"
    )
