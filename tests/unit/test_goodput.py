"""The checkpoint interval chosen from measurements (run/interval.py) and the goodput model
(run/goodput.py): Young/Daly, what each input changes, the simulator against the closed form, and
the strategies against each other."""

import json
import math

import pytest

from hpc_mm.run import goodput, interval
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir

from conftest import JOBS, run_cli


def run_with(tmp_path, saves=(), step=None, interruptions=0, held_hours=1.0) -> RunDir:
    """A run directory with measured saves, iterations of `step` seconds, and interruptions."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    run = RunDir(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "job.yaml").write_text((JOBS / "tiny-vlm.yaml").read_text().replace("tiny-vlm/", f"{JOBS}/tiny-vlm/"))
    t0 = 1_000_000.0
    for restart in range(interruptions + 1):
        began = t0 + restart * held_hours * 3600 / (interruptions + 1)
        key = StartKey("7", restart)
        run.record(Kind.STARTED, key, time=began)
        ends = began + held_hours * 3600 / (interruptions + 1) - 1
        if restart < interruptions:
            run.record(Kind.REQUEUED, key, cause="crash", time=ends)
        elif interruptions:
            run.record(Kind.COMPLETED, key, time=ends)
    for i, seconds in enumerate(saves):
        run.record(
            Kind.CHECKPOINT,
            StartKey("7", 0),
            iteration=(i + 1) * 10,
            reason="interval",
            seconds=seconds,
            time=t0 + 10 + i,
        )
    if step:
        for i in range(1, 40):
            run.write_metric(Metric(iteration=i, loss=1.0, time=t0 + i * step, step_ms=step * 1000))
    return run.reread()


def test_young_daly():
    assert interval.young_daly(30, 3600 * 8) == pytest.approx(math.sqrt(2 * 30 * 28800))


def test_auto_interval_follows_the_save_time_and_the_failure_rate(tmp_path):
    slow = interval.choose(8.0, run_with(tmp_path / "a", saves=[120, 120], step=2.0))
    fast = interval.choose(8.0, run_with(tmp_path / "b", saves=[10, 10], step=2.0))
    flaky = interval.choose(1.0, run_with(tmp_path / "c", saves=[10, 10], step=2.0))
    assert slow.iterations > fast.iterations > flaky.iterations
    assert fast.iterations == round(math.sqrt(2 * 10 * 8 * 3600) / 2.0)
    assert (fast.save_source, fast.mtbf_source) == ("measured (2 saves)", "declared")
    assert "Young/Daly" in fast.describe() and "declared" in fast.describe()


def test_auto_interval_from_the_runs_own_history(tmp_path):
    run = run_with(tmp_path, saves=[20], step=1.0, interruptions=3, held_hours=3.0)
    chosen = interval.choose(None, run)
    assert chosen.mtbf_source.startswith("observed: 3 interruptions")
    assert chosen.mtbf_seconds == pytest.approx(3 * 3600 / 3, rel=0.05)


def test_auto_interval_before_anything_is_measured(tmp_path):
    chosen = interval.choose(None, None)
    assert chosen.iterations == interval.FIRST_START and chosen.seconds is None
    assert chosen.save_source == "assumed" and chosen.mtbf_source == "assumed"


def test_an_entry_that_cannot_save_on_a_signal_stays_within_the_grace_time(tmp_path):
    run = run_with(tmp_path, saves=[60], step=1.0)
    free = interval.choose(24.0, run, saves_on_signal=False)
    kept = interval.choose(24.0, run, grace_seconds=300, saves_on_signal=False)
    assert free.iterations > 300 and kept.iterations == 300 and "grace time of 300 s" in kept.describe()
    assert interval.choose(24.0, run, grace_seconds=300, saves_on_signal=True).iterations == free.iterations


def test_validate_prints_the_interval_it_would_choose(tmp_path):
    run = run_with(tmp_path / "run", saves=[30, 30], step=0.5)
    result = run_cli(
        "validate",
        JOBS / "tiny-vlm.yaml",
        "--set",
        "checkpoint.save_interval=auto",
        "--set",
        "fault.mtbf_hours=2",
        "--run-dir",
        run.path,
    )
    assert result.returncode == 0, result.stderr
    expected = round(math.sqrt(2 * 30 * 2 * 3600) / 0.5)
    assert f"checkpoint.save_interval: auto: {expected} iterations" in result.stdout, result.stdout
    args = run_cli(
        "args",
        JOBS / "tiny-vlm.yaml",
        "--set",
        "checkpoint.save_interval=auto",
        "--set",
        "fault.mtbf_hours=2",
        "--run-dir",
        run.path,
    ).stdout
    assert f"--save-interval {expected} " in args


# ---------------------------------------------------------------- the goodput model
COSTS = goodput.Costs(save=30, stop=10, restart_inside=45, startup=120, step=2)


def test_no_faults_costs_only_the_saves():
    scale = goodput.Scale(1024, failure_rate=0.0, preemptions_per_day=0.0)
    out = goodput.simulate(COSTS, scale, "requeue", work=86400, interval=600)
    assert out.interruptions == 0
    assert out.goodput == pytest.approx(86400 / (86400 + 30 * 144 + 120), rel=1e-3)


def test_simulator_agrees_with_the_closed_form_where_faults_are_rare():
    scale = goodput.Scale(2048, queue_wait=600, spares=4, repeat=0.0)
    for strategy in ("requeue", "inside"):
        runs = [goodput.simulate(COSTS, scale, strategy, work=60 * 86400, seed=s).goodput for s in range(4)]
        assert sum(runs) / len(runs) == pytest.approx(goodput.closed_form(COSTS, scale, strategy), abs=0.02)


def test_restarting_inside_beats_the_queue_and_spares_beat_both_at_scale():
    scale = goodput.Scale(16384, queue_wait=3600, spares=4)
    rows = goodput.predict(COSTS, [scale], seeds=3, work=10 * 86400)[0]
    assert rows["spares"] > rows["inside"] > rows["requeue"]
    assert rows["interval_seconds"] == pytest.approx(math.sqrt(2 * 30 * scale.mtbf))


def test_spares_run_out_and_the_queue_shows():
    many, few = (goodput.Scale(100_000, queue_wait=3600, spares=s, repeat=0.0) for s in (16, 1))
    a = goodput.simulate(COSTS, many, "spares", work=5 * 86400, seed=1)
    b = goodput.simulate(COSTS, few, "spares", work=5 * 86400, seed=1)
    assert b.requeues > a.requeues and a.goodput > b.goodput


def test_a_fixed_schedule_is_replayed():
    scale = goodput.Scale(8, per_node=4, failure_rate=0.0, spares=1, queue_wait=0.0)
    schedule = [(1000.0, "crash"), (2000.0, "node"), (3000.0, "crash")]
    out = goodput.simulate(COSTS, scale, "spares", work=5000, interval=400, schedule=schedule)
    assert (out.interruptions, out.restarts_inside, out.requeues) == (3, 3, 0)


def test_goodput_command_prints_the_table_and_the_figure(tmp_path):
    run = run_with(tmp_path / "run", saves=[30, 30], step=2.0)
    result = run_cli("goodput", run.path, "--accelerators", "1024,16384", "--seeds", "1", "--days", "3", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["accelerators"] for r in out["rows"]] == [1024, 16384]
    assert out["costs"]["save"] == 30 and out["costs"]["sources"]["save"] == "measured (2)"
    assert (run.path / "goodput.png").stat().st_size > 1000
    text = run_cli("goodput", run.path, "--accelerators", "16384", "--seeds", "1", "--days", "2").stdout
    assert "requeue" in text and "16,384" in text
    bad = run_cli("goodput", run.path, "--accelerators", "lots")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --accelerators")


def test_faults_faster_than_a_save_and_a_step_give_no_goodput_and_an_answer():
    """The simulation of a job that keeps nothing ends, with 0, instead of running for ever."""
    from hpc_mm.run import goodput

    costs = goodput.Costs(save=60.0, step=1.0)
    for rate in (1e300, 1.0):
        scale = goodput.Scale(accelerators=10**12, failure_rate=rate)
        for strategy in ("requeue", "inside", "spares"):
            out = goodput.simulate(costs, scale, strategy, work=86400.0)
            assert out.goodput < 1e-3 and out.interruptions > 0
            assert 0.0 <= goodput.closed_form(costs, scale, strategy) < 1e-3


@pytest.mark.parametrize(
    "flag", ["--preemptions-per-day=-5", "--queue-wait-minutes=-1", "--spares=-1", "--node-loss=-0.5", "--node-loss=2"]
)
def test_a_negative_rate_or_share_is_refused(flag):
    from conftest import JOBS, cli_in_process

    rc, out, err = cli_in_process("goodput", JOBS / "tiny-vlm.yaml", flag)
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err


def test_a_background_save_counts_what_it_held_not_its_whole_write(tmp_path):
    run = run_with(tmp_path, saves=[10, 10], step=2.0)
    for i in (3, 4):  # two background saves: 20 s to write, 0.2 s held
        run.record(Kind.CHECKPOINT, StartKey("7", 0), iteration=i * 10, reason="interval", seconds=20, blocked=0.2)
    run = run.reread()
    held = [e.stall_seconds for e in run.events() if e.kind is Kind.CHECKPOINT]
    assert held == [10, 10, 0.2, 0.2]
    chosen = interval.choose(8.0, run)
    assert chosen.save_seconds == pytest.approx(5.1)  # the median of what the saves held
    # and never shorter than a whole save: one starts once the last is written
    quick = interval.choose(0.001, run_with(tmp_path / "q", step=1.0))
    assert quick.seconds >= 1.0
    assert goodput.measured(run).save == pytest.approx(5.1)


def test_the_levers_are_the_runs_own_ratios_applied_to_the_costs(tmp_path):
    run = run_with(tmp_path, saves=[10], step=2.0)
    run.record(Kind.CHECKPOINT, StartKey("7", 0), iteration=50, reason="interval", seconds=20, blocked=0.5)
    ratios = goodput.measured_ratios(run.reread())
    assert ratios.stall == pytest.approx(0.025) and ratios.warm == 1.0  # no restart inside measured
    costs = goodput.Costs(save=60, restart_inside=120, startup=600, step=5)
    scale = goodput.Scale(accelerators=16384, per_node=8, spares=8, queue_wait=600)
    row = goodput.levers(costs, goodput.Ratios(stall=0.01, warm=0.3), [scale], seeds=2, work=2 * 86400)[0]
    assert row["as given"] < row["warm restart"] < row["both"] and row["as given"] < row["async save"] < row["both"]
    # a background save still takes its whole write between two saves
    assert goodput.interval_for(goodput.Costs(save=0.01, write=60, step=5), scale) == 60


def test_goodput_command_shows_the_levers(tmp_path):
    out = run_cli(
        "goodput", JOBS / "tiny-vlm.yaml", "--accelerators", "16384", "--save-seconds", "60",
        "--restart-seconds", "120", "--startup-seconds", "600", "--stall-ratio", "0.01", "--warm-ratio", "0.3",
        "--days", "2", "--seeds", "1", "--figure", tmp_path / "g.png", check=True,
    ).stdout  # fmt: skip
    assert "levers: a save holds training 0.01x its time (declared)" in out and "warm restart" in out
    bad = run_cli("goodput", JOBS / "tiny-vlm.yaml", "--warm-ratio", "2")
    assert bad.returncode == 2 and "--warm-ratio: 2.0 is not a ratio between 0 and 1" in bad.stderr
