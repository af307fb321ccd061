"""The step's launchers watch each other (launch/peers.py): a failed entry or a vanished launcher ends
every part of the step at once; a clean end, or a stop, ends nothing."""

from __future__ import annotations

import threading
import time

import pytest

from hpc_mm.launch import peers


class Part:
    def __init__(self, tmp_path, me: str, leader: bool):
        self.ended = threading.Event()
        self.peers = peers.Peers(tmp_path / "addr", me, leader, "127.0.0.1", lambda why: self.ended.set())
        self.peers.start()


@pytest.fixture
def step(tmp_path):
    parts = [Part(tmp_path, "node 0", True)] + [Part(tmp_path, f"node {i}", False) for i in (1, 2)]
    deadline = time.time() + 10
    while len(parts[0].peers._socks) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert len(parts[0].peers._socks) == 2
    yield parts
    for part in parts:
        part.peers.close()


def test_a_failed_entry_ends_every_part_within_a_second(step):
    t = time.monotonic()
    step[2].peers.entry_exited(-9, stopping=False)
    assert step[0].ended.wait(1) and step[1].ended.wait(1)
    assert time.monotonic() - t < 1.0
    assert "node 2's entry failed (exit code -9)" in step[1].peers.ended


def test_a_launcher_that_vanishes_ends_the_step(step):
    step[1].peers._halt.set()
    step[1].peers._to_leader.close()  # its process died: the kernel closes its connection
    assert step[0].ended.wait(1) and step[2].ended.wait(1)
    assert "vanished" in step[2].peers.ended


def test_the_leader_vanishing_ends_the_step(step):
    step[0].peers._halt.set()
    step[0].peers.close()
    assert step[1].ended.wait(2) and step[2].ended.wait(2)


def test_clean_ends_and_stops_end_nothing(step):
    step[1].peers.entry_exited(0, stopping=False)
    step[2].peers.entry_exited(1, stopping=True)  # a stop: the entry saved and went its own way
    time.sleep(1.0)
    step[0].peers.entry_exited(0, stopping=False)
    time.sleep(0.5)
    assert not any(p.ended.is_set() for p in step)


def test_a_silent_member_is_gone_after_the_silence(step, monkeypatch):
    monkeypatch.setattr(peers, "SILENCE", 1.0)
    step[1].peers._halt.set()  # alive but saying nothing (a node that lost power keeps no socket open)
    assert step[0].ended.wait(4)
    assert "silent" in step[0].peers.ended
