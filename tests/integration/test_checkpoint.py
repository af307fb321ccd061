"""Atomic checkpoints: kill -9 at any moment leaves the previous one loadable; corrupt ones fall back."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from hpc_mm.errors import UserError
from hpc_mm.train import checkpoint

WRITER = """
import sys, torch
from hpc_mm.train import checkpoint
save_dir = sys.argv[1]
start = (checkpoint.latest_iteration(save_dir) or 0) + 1
for it in range(start, start + 1000):
    # ~64 MB per checkpoint so a write takes long enough to be interrupted
    checkpoint.save(save_dir, it, {"iteration": it, "w": torch.full((16 * 1024 * 1024,), float(it))}, keep_last=2)
    print(it, flush=True)
"""


def test_kill_9_during_writes_leaves_previous_loadable(tmp_path):
    save_dir = tmp_path / "ckpt"
    rng = random.Random(0)
    interrupted_mid_write = 0
    for _round in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(save_dir)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one commit this round
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted_mid_write += any(save_dir.glob(".tmp.iter_*"))
        tracked = checkpoint.latest_iteration(save_dir)
        iteration, state = checkpoint.load_latest(save_dir)
        assert iteration == tracked == state["iteration"]
        assert torch.all(state["w"] == float(iteration))
    assert interrupted_mid_write >= 1, "no kill landed during a write; the test proved nothing"


def test_corrupt_latest_falls_back_with_warning(tmp_path, capsys):
    for it in (10, 20):
        checkpoint.save(tmp_path, it, {"iteration": it})
    (checkpoint.checkpoint_file(tmp_path, 20)).write_bytes(b"garbage, not a zip")
    iteration, state = checkpoint.load_latest(tmp_path)
    assert iteration == 10 and state["iteration"] == 10
    assert "WARNING" in capsys.readouterr().err


def test_load_missing_corrupt_and_empty(tmp_path):
    assert checkpoint.load_latest(tmp_path / "absent") is None  # fresh start
    assert checkpoint.load_latest(tmp_path) is None  # empty folder: fresh start
    checkpoint.save(tmp_path, 5, {"iteration": 5})
    (checkpoint.checkpoint_file(tmp_path, 5)).write_bytes(b"")
    with pytest.raises(UserError, match="no loadable checkpoint"):
        checkpoint.load_latest(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / checkpoint.TRACKER).write_text("latest")
    with pytest.raises(UserError, match="does not hold an iteration"):
        checkpoint.load_latest(bad)


def test_uncommitted_iteration_is_replaced_and_retention(tmp_path):
    checkpoint.save(tmp_path, 1, {"v": 1})
    checkpoint.iter_dir(tmp_path, 2).joinpath("mp_rank_00").mkdir(parents=True)  # a crash before the tracker
    checkpoint.save(tmp_path, 2, {"v": 2}, keep_last=1)
    assert checkpoint.latest_iteration(tmp_path) == 2 and checkpoint.saved_iterations(tmp_path) == [2]
    assert checkpoint.load_latest(tmp_path)[1]["v"] == 2
