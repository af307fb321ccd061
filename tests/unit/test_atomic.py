"""run/atomic.py: a file replaced whole or not at all, whenever the writer dies."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hpc_mm.run.atomic import write_atomic

from conftest import ROOT

WRITER = """
import sys
from hpc_mm.run.atomic import write_atomic
i = 0
while True:
    i += 1
    write_atomic(sys.argv[1], (str(i % 10) * 4_000_000), mode=0o640, durable=i % 3 == 0)
"""


def test_a_writer_killed_at_any_moment_leaves_a_whole_file(tmp_path):
    target = tmp_path / "record.json"
    write_atomic(target, "0" * 4_000_000)
    for delay in (0.05, 0.13, 0.31, 0.52):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        text = target.read_text()
        assert len(text) == 4_000_000 and len(set(text)) == 1, (delay, len(text))
    for leftover in tmp_path.glob(".record.json.*"):
        leftover.unlink()  # a killed writer's temporary file: hidden, never read


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "info.json"
    write_atomic(target, "old", mode=0o640)
    assert oct(target.stat().st_mode & 0o777) == "0o640"

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["info.json"]
