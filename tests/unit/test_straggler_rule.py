"""The straggler rule (run/stragglers.py) on step times as a loaded machine gives them: a rank 30%
slower is named within 50 steps; in healthy runs, however noisy their steps, nobody is."""

from __future__ import annotations

import random

import pytest

from hpc_mm.run.records import Metric
from hpc_mm.run.stragglers import Detector


def steps(rng, ranks: int, count: int, slowed: int | None = None, since: int = 0, stops: bool = False):
    """Per-rank compute times: a shared drift (the machine's load), each rank's own jitter, and
    occasional long steps (a page fault storm, another job's burst) on any rank. From `since`, rank
    `slowed` loses 30% of its speed: every step 1/0.7 as long, or (`stops`) stopped 7 ms of every
    23 ms (as the integration test stops a rank), which lengthens the steps a stop falls in."""
    clock = 0.0
    for step in range(count):
        load = 1 + 0.3 * abs(rng.gauss(0, 1))
        row = []
        for rank in range(ranks):
            t = 0.012 * load * rng.lognormvariate(0, 0.12)
            if rng.random() < 0.05:
                t *= rng.uniform(1.5, 3)
            if step >= since and rank == slowed:
                if stops:
                    stopped = int((clock + t) / 0.023) - int(clock / 0.023)  # stops that began in this step
                    t += 0.007 * stopped
                else:
                    t /= 0.7
            row.append(t)
        clock += max(row)
        yield step + 1, row


@pytest.mark.parametrize("seed", range(50))
@pytest.mark.parametrize("ranks", [2, 4, 8])
@pytest.mark.parametrize("stops", [False, True])
def test_a_rank_slowed_by_thirty_percent_is_named_within_fifty_steps(seed, ranks, stops):
    rng = random.Random(seed)
    slowed = rng.randrange(ranks)
    detector, named = Detector(), []
    for step, row in steps(rng, ranks, 200, slowed, since=100, stops=stops):
        named += [(step, s) for s in detector.feed(step, row)]
    assert [s.rank for _, s in named] == [slowed]
    assert named[0][0] - 100 <= 50 and named[0][1].ratio > 1.2


@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_no_rank_is_named_in_a_hundred_healthy_steps(seed, ranks):
    rng = random.Random(1000 + seed)
    detector = Detector()
    assert not [s for step, row in steps(rng, ranks, 100) for s in detector.feed(step, row)]


def test_a_rank_is_named_once_and_a_single_rank_names_nobody():
    detector = Detector(window=2, steps=2)
    found = [s for i in range(10) for s in detector.feed(i, [0.1, 0.1, 0.3])]
    assert [s.rank for s in found] == [2]
    assert Detector().feed(1, [5.0]) == []


def test_metrics_rows_carry_each_ranks_time():
    row = Metric.from_json({"iteration": 3, "loss": 1.0, "rank_seconds": [[0.1, 0.2], [0.1, 0.3]]})
    assert row.rank_seconds == ((0.1, 0.2), (0.1, 0.3)) and row.to_json()["rank_seconds"] == [[0.1, 0.2], [0.1, 0.3]]
    assert Metric.from_json({"iteration": 3, "loss": 1.0, "rank_seconds": [["x"]]}).rank_seconds is None
    assert Metric.from_json({"iteration": 3, "loss": 1.0, "rank_seconds": [0.1]}).rank_seconds is None


def test_steps_a_rank_was_preempted_in_are_left_out():
    """A rank sharing its CPU with another process is slower in the steps it is preempted in, for as long
    as the other process runs (the trainer reports those steps as None): that says nothing of the rank."""
    detector = Detector()
    rng = random.Random(7)
    named = []
    for step in range(1, 301):
        contended = 50 <= step < 200 and rng.random() < 0.9  # rank 0 preempted in most steps for 150 steps
        times = [None if contended else 0.012 * rng.lognormvariate(0, 0.05), 0.012 * rng.lognormvariate(0, 0.05)]
        named += detector.feed(step, times)
    assert named == []
    slowed = Detector()  # the same rank slower in the steps it was not preempted in is named
    found = [s for step in range(1, 200) for s in slowed.feed(step, [None if step % 3 == 0 else 0.02, 0.012])]
    assert [s.rank for s in found] == [0] and found[0].ratio > 1.5


def test_a_row_with_unmeasured_steps_reads_back():
    row = Metric.from_json({"iteration": 20, "loss": 1.0, "rank_seconds": [[0.01, None], [0.012, 0.011]]})
    assert row.rank_seconds == ((0.01, None), (0.012, 0.011))
    assert Metric.from_json(row.to_json()) == row
