"""Readers of the run directory (status, report, logs) survive what a crash or a concurrent writer
leaves behind, and behave like Unix tools."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hpc_mm.environments.local import LocalEnvironment
from hpc_mm.job.secrets import is_secret_name

from conftest import HPC_MM, JOBS
from conftest import cli_in_process as cli


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A run directory as a finished 2 x 2 run leaves it (written here, without training)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "-o", os.devnull)[0] == 0
    events = [
        {"event": "started", "time": 1.0, "job_id": "1", "restart": 0, "nnodes": 2, "world_size": 4},
        {"event": "checkpoint", "time": 2.0, "job_id": "1", "restart": 0, "iteration": 10, "reason": "final"},
        {"event": "completed", "time": 3.0, "job_id": "1", "restart": 0, "returncode": 0},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"iteration": i, "loss": 3.0 / i, "lr": 1e-3, "samples_per_second": 100.0, "time": i}) + "\n"
            for i in range(1, 11)
        )
    )
    ckpt = run_dir / "checkpoints" / "iter_0000010" / "mp_rank_00"
    ckpt.mkdir(parents=True)
    (ckpt / "model_optim_rng.pt").write_bytes(b"x" * 100)
    (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("10")
    (run_dir / "logs" / "tiny-vlm-1-r0-t0.out").write_text(
        "hpc-mm launch: torchrun agent node 0/2\n[rank 0] iteration 10/10\n[rank 1] a warning\n"
        "Traceback (most recent call last):\nValueError: boom\n"
    )
    (run_dir / "logs" / "tiny-vlm-1-r0-t1.out").write_text("[rank 2] hello\nunprefixed on node 1\n")
    return run_dir


def _write(path, data):
    if path.is_dir():
        shutil.rmtree(path)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def _folder(path):
    if path.exists():
        path.unlink() if path.is_file() else shutil.rmtree(path)
    path.mkdir()


CORRUPTIONS = [
    ("events-cut-mid-line", "events.jsonl", '{"event": "started", "time": 1.0, "restart": 0}\n{"event": "checkp'),
    ("events-invalid-utf8", "events.jsonl", b'{"event": "started", "restart": 0}\n\xff\xfe\x80garbage\n'),
    ("events-not-objects", "events.jsonl", '[1, 2]\n42\n"started"\nnull\n{"event": "completed", "restart": 0}\n'),
    ("events-a-folder", "events.jsonl", _folder),
    ("events-wrong-types", "events.jsonl", '{"event": 5}\n{"restart": "two", "event": "started"}\n{"no": "event"}\n'),
    ("events-blank-lines", "events.jsonl", "\n\n\n"),
    ("metrics-cut", "metrics.jsonl", '{"iteration": 1, "loss": 3.0}\n{"iteration": 2, "lo'),
    ("metrics-invalid-utf8", "metrics.jsonl", b'\x80\x81{"iteration": 1}\n'),
    ("metrics-wrong-types", "metrics.jsonl", '{"iteration": "1", "loss": "x"}\n{"iteration": null, "loss": 1}\n[]\n'),
    ("metrics-a-folder", "metrics.jsonl", _folder),
    ("tracker-garbage", "checkpoints/latest_checkpointed_iteration.txt", "latest\n"),
    ("tracker-a-folder", "checkpoints/latest_checkpointed_iteration.txt", _folder),
    ("tracker-binary", "checkpoints/latest_checkpointed_iteration.txt", b"\x00\xff\x10"),
    ("checkpoints-a-file", "checkpoints", "not a folder"),
    ("manifest-garbage", "checkpoints/iter_0000010/manifest.json", "{not json"),
    ("run-json-garbage", "run.json", "{{{"),
    ("run-json-a-list", "run.json", "[1, 2, 3]"),
    ("run-json-a-folder", "run.json", _folder),
    ("logs-a-file", "logs", "not a folder"),
    ("a-log-that-is-a-folder", "logs/tiny-vlm-1-r0-t0.out", _folder),
    ("a-log-invalid-utf8", "logs/tiny-vlm-1-r0-t0.out", b"\xff\xfe[rank 0] x\n\x80\n"),
    ("job-file-garbage", "job.yaml", "name: [unclosed\n"),
    ("job-file-empty", "job.yaml", ""),
]


def _events(*extra):
    base = {"job_id": "1", "restart": 0}
    rows = [{"event": "started", "time": 1.0, **base, "nnodes": 2, "world_size": 4}, *extra]
    rows.append({"event": "completed", "time": 30.0, **base, "returncode": 0})
    return "".join(json.dumps({**base, **r}) + "\n" for r in rows)


def _metrics(**row):
    rows = [{"iteration": i, "loss": 1.0, "time": float(i), "samples_per_second": 10.0} for i in range(1, 4)]
    return "".join(json.dumps(r) + "\n" for r in [*rows, {"iteration": 4, "loss": 1.0, "time": 4.0, **row}])


HUGE = 10**400
# Records of the right shape with values of the wrong type or size: every reader must take them.
# (json.dumps writes NaN and Infinity, as Python's json reads them.)
VALUES = [
    ("time-nan", "events.jsonl", _events({"event": "checkpoint", "time": float("nan"), "iteration": 2})),
    ("time-inf", "events.jsonl", _events({"event": "checkpoint", "time": float("inf"), "iteration": 2})),
    ("time-negative", "events.jsonl", _events({"event": "requeued", "time": -5.0, "cause": "preemption"})),
    ("time-huge-int", "events.jsonl", _events({"event": "checkpoint", "time": HUGE, "iteration": 2})),
    ("time-text", "events.jsonl", _events({"event": "checkpoint", "time": "yesterday", "iteration": 2})),
    ("restart-list", "events.jsonl", _events({"event": "requeued", "time": 5.0, "restart": [1]})),
    ("restart-huge", "events.jsonl", _events({"event": "started", "time": 5.0, "restart": HUGE})),
    ("iteration-text", "events.jsonl", _events({"event": "checkpoint", "time": 2.0, "iteration": "ten"})),
    ("iteration-huge", "events.jsonl", _events({"event": "checkpoint", "time": 2.0, "iteration": HUGE})),
    ("iteration-float", "events.jsonl", _events({"event": "checkpoint", "time": 2.0, "iteration": 1e300})),
    ("seconds-negative", "events.jsonl", _events({"event": "checkpoint", "time": 2.0, "iteration": 2, "seconds": -1})),
    ("seconds-nan", "events.jsonl", _events({"event": "checkpoint", "time": 2.0, "iteration": 2, "seconds": "nan"})),
    ("nnodes-text", "events.jsonl", _events({"event": "started", "time": 2.0, "nnodes": "two", "world_size": "x"})),
    ("world-zero", "events.jsonl", _events({"event": "started", "time": 2.0, "nnodes": 0, "world_size": 0})),
    ("hosts-number", "events.jsonl", _events({"event": "started", "time": 2.0, "hosts": 5, "exclude": 7})),
    ("lost-text", "events.jsonl", _events({"event": "requeued", "time": 9.0, "lost_iterations": "many"})),
    ("batch-times", "events.jsonl", _events({"event": "started", "time": 2.0, "batch_started_at": "x"})),
    ("interval-text", "events.jsonl", _events({"event": "started", "time": 2.0, "save_interval": "auto"})),
    ("interval-dict", "events.jsonl", _events({"event": "started", "time": 2.0, "save_interval": {"chosen": "x"}})),
    ("metric-time-nan", "metrics.jsonl", _metrics(time=float("nan"))),
    ("metric-time-inf", "metrics.jsonl", _metrics(time=float("-inf"))),
    ("metric-time-back", "metrics.jsonl", _metrics(time=-100.0)),
    ("metric-loss-inf", "metrics.jsonl", _metrics(loss=float("inf"))),
    ("metric-loss-text", "metrics.jsonl", _metrics(loss="low")),
    ("metric-iteration-huge", "metrics.jsonl", _metrics(iteration=HUGE)),
    ("metric-speed-negative", "metrics.jsonl", _metrics(samples_per_second=-5.0, step_ms=0)),
    ("metric-speed-huge", "metrics.jsonl", _metrics(samples_per_second=1e308, step_ms=1e-308)),
    ("metric-train-iters-zero", "metrics.jsonl", _metrics(train_iters=0)),
    ("metric-batch-text", "metrics.jsonl", _metrics(global_batch_size="big", consumed_samples=-1)),
    ("run-json-types", "run.json", json.dumps({"job_id": 5, "job_ids": "12", "array": [], "after": 3, "name": {}})),
    ("run-json-huge", "run.json", json.dumps({"job_id": HUGE, "job_ids": [HUGE, None]})),
    ("mm-zero-heads", "mm/model.json", json.dumps({"text_decoder": {"num_layers": 2, "hidden_size": 8,
                                                   "num_attention_heads": 0, "ffn_hidden_size": 0}})),
    ("mm-model-a-list", "mm/model.json", "[1, 2]"),
    ("heartbeat-garbage", "heartbeats/1-r0-n0.json", json.dumps({"node": "x", "time": "nan", "ranks": 5})),
    ("cancel-garbage", "cancel.json", json.dumps({"job_id": [], "time": "x"})),
    ("notifications-garbage", "notifications.jsonl", "[]\n{\"time\": \"x\"}\n"),
]  # fmt: skip


@pytest.mark.parametrize("name,data", [c[1:] for c in CORRUPTIONS + VALUES], ids=[c[0] for c in CORRUPTIONS + VALUES])
def test_corrupt_run_directory_files(good_run, tmp_path, name, data):
    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    path = run_dir / name
    if callable(data):
        data(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, data)
    for argv in (
        ["status", run_dir],
        ["status", run_dir, "--json"],
        ["logs", run_dir],
        ["logs", run_dir, "--rank", "1"],
        ["report", run_dir],
        ["goodput", run_dir, "--seeds", "1", "--days", "1", "--accelerators", "1024"],
        ["validate", run_dir / "job.yaml", "--run-dir", run_dir],
    ):
        rc, out, err = cli(*argv)
        assert rc in (0, 2), (argv, rc, err)
        assert "Traceback" not in err and "Traceback" not in out.replace(
            "Traceback (most recent call last):\nValueError", ""
        )
        if rc == 2:
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (argv, err)
    import hpc_mm

    try:
        assert hpc_mm.run(run_dir).status() is not None
        assert [r.status() for r in hpc_mm.runs(run_dir.parent)]
    except hpc_mm.UserError:
        pass


def test_logs_of_one_rank_keep_that_tasks_unprefixed_lines(good_run):
    rc, out, _ = cli("logs", good_run, "--rank", "0")
    assert rc == 0 and "[rank 0] iteration 10/10" in out and "Traceback (most recent call last):" in out
    assert "[rank 1]" not in out and "unprefixed on node 1" not in out
    rc, out, _ = cli("logs", good_run, "--rank", "2")
    assert "[rank 2] hello" in out and "unprefixed on node 1" in out and "ValueError" not in out
    rc, _, err = cli("logs", good_run, "--rank", "4")
    assert rc == 2 and err.startswith("error: --rank: 4 is not a rank of this run (ranks 0..3)")


def test_logs_into_head_end_quietly(good_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    (run_dir / "logs" / "tiny-vlm-1-r0-t0.out").write_text("[rank 0] line\n" * 200_000)
    result = subprocess.run(
        f"{' '.join(HPC_MM)} logs '{run_dir}' | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.stdout == "[rank 0] line\n" and result.stderr == "", result.stderr


@pytest.mark.parametrize(
    "name,secret",
    [
        ("HF_TOKEN", True),
        ("WANDB_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("GITHUB_PAT", True),
        ("DB_PASSWORD", True),
        ("SMTP_PASS", True),
        ("MY_SECRET_FILE", True),
        ("SSH_KEY", True),
        ("OPENAI_APIKEY", True),
        ("TOKENIZERS_PARALLELISM", False),
        ("HCCL_CONNECT_TIMEOUT", False),
        ("CUDA_DEVICE_MAX_CONNECTIONS", False),
        ("PATH", False),
        ("PYTORCH_NPU_ALLOC_CONF", False),
        ("KEYBOARD_LAYOUT", False),
        ("PASSAGE_COUNT", False),
    ],
)
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_a_launch_started_by_hand_picks_a_free_port():
    first, second = LocalEnvironment({}), LocalEnvironment({})
    assert first.main_port() == first.main_port() and first.main_port() != 6000
    assert 1024 <= first.main_port() <= 65535 and first.main_port() != second.main_port()
    assert LocalEnvironment({}, nnodes=2).main_port() == 6000  # several nodes by hand: a port they all know
    assert LocalEnvironment({"MASTER_PORT": "7001"}).main_port() == 7001


def test_report_without_matplotlib_prints_the_summary_and_says_why_there_is_no_figure(good_run, monkeypatch):
    import builtins

    real = builtins.__import__

    def without_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    rc, out, err = cli("report", good_run)
    assert rc == 0 and "iterations" in out and "loss" in out, (out, err)
    assert err.startswith("warning: figure: not drawn: matplotlib is not installed"), err
