"""Recovery inside the allocation against a requeue, and the goodput simulator against the cluster.

1. Restart cost, side by side. Two runs of jobs/tiny-vlm.yaml (2 nodes x 1 rank, torchrun, gloo,
   partition `low`, an idle cluster): one restarts inside its allocation (requeue.inside: true,
   spare_nodes: 1), one goes back through the queue (requeue.inside: false). Each has a rank killed
   (SIGKILL) CRASHES times, a few seconds into a start. For every crash, from the run's record:

     rank killed -> all processes gone (the step ended) -> decided and recorded (`finish`)
     -> batch script starts the next start (inside: at once; requeue: Slurm requeues the job, its
        hold is lifted by hpc-mm, it is scheduled again on an idle cluster)
     -> training started (preflight, launch) -> first resumed iteration

2. Goodput, measured against predicted. A run with spare_nodes: 1 and requeue.inside: true gets a
   schedule of faults: a rank killed every EVERY seconds, and once one node dies (its slurmd and
   every process of the job there). Its goodput (training kept over wall-clock time, from its
   record) is set against the simulator's (hpc_mm/run/goodput.py) for the same schedule, fed with
   the costs measured in part 1 (a prediction: nothing of run 2 goes into it).

3. The simulator at 16,384 accelerators with Meta's failure rate (Llama 3: an interruption every
   1.8 h), with the costs measured in part 1 and with production-sized costs, and the checkpoint
   interval `save_interval: auto` picks there.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_save import stall_ratio  # noqa: E402
from common import job_processes, spread, submit_tiny, table, verdict  # noqa: E402
from preempt import finish, first_row_after, started, wait_until  # noqa: E402

from hpc_mm.run import goodput, timeline  # noqa: E402
from hpc_mm.run.rundir import RunDir, read_events  # noqa: E402

PY = sys.executable
CONF = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
CRASHES = 5
TRAIN_SECONDS = 6  # each start trains this long before its rank is killed
EVERY = 60  # part 2: seconds between crashes
ITERS = 3000  # part 2: the run's length (about five minutes of training)
ENDS = ("restarted", "requeued", "failed", "gave_up", "completed", "cancelled")


def submit(run_dir: Path, overrides: list[str]) -> str:
    base = [
        "slurm.partition=low",
        "slurm.time=60",
        "distributed.nproc_per_node=1",
        "requeue.max_restarts=100",
        "requeue.on_failure=100",
    ]
    return submit_tiny(run_dir, [*base, *overrides])


def kill_rank(run_dir: Path, job_id: str, restart: int) -> float:
    host = started(run_dir, restart)["hosts"][-1]
    pid = wait_until(lambda: job_processes(host, job_id, ranks_only=True))[0]
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    return at


def ends(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["event"] in ENDS]


def pieces(run_dir: Path, restart: int, killed_at: float) -> dict[str, float]:
    end = next(e for e in ends(run_dir) if e["restart"] == restart)
    nxt = started(run_dir, restart + 1)
    first = first_row_after(run_dir, nxt["time"])
    batch = nxt.get("batch_started_at", nxt["time"])
    return {
        "rank killed -> all processes gone": end["step_ended_at"] - killed_at,
        "all processes gone -> decided and recorded": end["time"] - end["step_ended_at"],
        "decided -> next start's batch script (requeue: Slurm)": batch - end["time"],
        "batch script -> training started (preflight, launch)": nxt["time"] - batch,
        "training started -> first resumed iteration": first["time"] - nxt["time"],
    }


MODES = {
    # label: overrides; a start's standbys refill 4 s after it begins (production: 10 s), once it trains
    "restart inside, warm (standbys)": ["slurm.spare_nodes=1", "env.HPC_MM_STANDBY_REFILL_AFTER='4'"],
    "restart inside, cold (no standbys)": ["slurm.spare_nodes=1", "requeue.warm_standby=false"],
    "requeue (idle cluster)": ["requeue.inside=false"],
}


def pools_ready(run_dir: Path, job_id: str, hosts: list[str]) -> bool:
    pools = {p["node"]: p for p in RunDir(run_dir).standby_states(job_id)}
    return all(h in pools and pools[h]["ready"] >= 2 for h in hosts)


def crash_run(folder: Path, label: str, extra: list[str], save_interval: int = 50) -> dict[str, list[float]]:
    run_dir = folder / f"crash-{len(list(folder.glob('crash-*')))}"
    job_id = submit(run_dir, ["gpt.train_iters=1000000", f"checkpoint.save_interval={save_interval}", *extra])
    found: dict[str, list[float]] = {}
    warm = "warm" in label
    for restart in range(int(os.environ.get("CRASHES", CRASHES))):
        s = wait_until(lambda: started(run_dir, restart), 600)
        first = wait_until(lambda: first_row_after(run_dir, s["time"]), 600)
        wait_until(lambda: first_row_after(run_dir, first["time"] + TRAIN_SECONDS), 600)
        if warm:  # the standbys of the start's nodes are ready (a fault more than a few seconds in)
            wait_until(lambda: pools_ready(run_dir, job_id, s["hosts"]), 300)
        killed = kill_rank(run_dir, job_id, restart)
        wait_until(lambda: (s := started(run_dir, restart + 1)) and first_row_after(run_dir, s["time"]), 600)
        said = [e["event"] for e in ends(run_dir)]
        assert said[-1] == ("requeued" if "requeue" in label else "restarted"), said
        for name, value in pieces(run_dir, restart, killed).items():
            found.setdefault(name, []).append(value)
    subprocess.run([PY, "-m", "hpc_mm", "cancel", job_id, "--now"], capture_output=True)
    finish(job_id, 180)
    if warm:
        cold = [e for e in read_events(run_dir) if e["event"] == "started" and e["restart"] > 0]
        logs = [p.read_text() for p in (run_dir / "logs").glob("*-r[1-9]-t*.out")]
        assert cold and not any("cold start" in text for text in logs), "a warm restart started cold"
    found["_run_dir"] = [run_dir]
    return found


def restart_costs(folder: Path) -> tuple[str, goodput.Costs, float]:
    runs = {label: crash_run(folder, label, extra) for label, extra in MODES.items()}
    # a warm process's first iteration without a checkpoint: a warm restart of a run that has saved none
    no_progress = "requeue.max_restarts_without_progress=100"  # (it never saves: no start moves a checkpoint)
    warm = MODES["restart inside, warm (standbys)"]
    fresh = crash_run(folder, "warm, no checkpoint", [*warm, no_progress], save_interval=10**6)
    names = [n for n in runs["restart inside, cold (no standbys)"] if not n.startswith("_")]
    rows = [[name, *(spread(r[name]) for r in runs.values())] for name in names]
    totals = {label: [sum(r[n][i] for n in names) for i in range(CRASHES)] for label, r in runs.items()}
    rows.append(["**rank killed -> first resumed iteration**", *(spread(t) for t in totals.values())])
    text = table([f"one crash ({CRASHES} each)", *MODES], rows)
    med = statistics.median
    warm, cold = totals["restart inside, warm (standbys)"], totals["restart inside, cold (no standbys)"]
    gone = runs["restart inside, warm (standbys)"]["rank killed -> all processes gone"]
    first_warm = runs["restart inside, warm (standbys)"]["training started -> first resumed iteration"]
    first_fresh = fresh["training started -> first resumed iteration"]
    ratio = med(warm) / med(cold)
    text += (
        f"\n\nA warm process's first iteration without a checkpoint (a warm restart of a run that saved none): "
        f"training started -> first iteration {spread(first_fresh)}.\n\n"
        + verdict("rank killed -> all processes gone (warm run)", med(gone), 1.0, lambda v: f"{v:.2f} s")
        + "\n"
        + verdict("rank killed -> first resumed iteration, warm over cold", ratio, 0.4, lambda v: f"{v:.2f}x")
        + "\n"
        + verdict(
            "warm restart's start -> first resumed iteration, over a warm first iteration without a checkpoint",
            med(first_warm) / med(first_fresh),
            1.2,
            lambda v: f"{v:.2f}x",
        )
        + "\n\nThe requeue's queue wait on an idle cluster is in its column; on a busy partition the requeue "
        "also waits its turn (tests/integration/test_restart_inside.py shows it behind a competing job)."
    )
    costs = goodput.measured(RunDir(runs["restart inside, warm (standbys)"]["_run_dir"][0]))
    return text, costs, ratio


def node_processes_and_slurmd(node: str, job_id: str) -> None:
    subprocess.run(["pkill", "-9", "-f", f"^/usr/sbin/slurmd -f {CONF} -N {node}$"], check=False)
    for pid in job_processes(node, job_id, ranks_only=False):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def restore(node: str) -> None:
    subprocess.run(["/usr/sbin/slurmd", "-f", CONF, "-N", node], capture_output=True)
    for _ in range(60):
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout
        if out.strip().startswith("idle") or out.strip().startswith("mix") or out.strip().startswith("alloc"):
            return
        time.sleep(1)


def schedule_run(folder: Path, costs: goodput.Costs) -> str:
    run_dir = folder / "schedule"
    job_id = submit(run_dir, [f"gpt.train_iters={ITERS}", "checkpoint.save_interval=50", "slurm.spare_nodes=1"])
    begun = wait_until(lambda: started(run_dir, 0), 600)
    t0 = begun.get("batch_started_at", begun["time"])
    faults: list[tuple[float, str]] = []
    dead = None
    restart = 0
    while True:
        s = wait_until(lambda: started(run_dir, restart) or finished(run_dir), 600)
        if finished(run_dir):
            break
        at = s.get("batch_started_at", s["time"]) + EVERY
        while time.time() < at and not finished(run_dir):
            time.sleep(0.5)
        if finished(run_dir):
            break
        if restart == 2 and dead is None:  # once: a node dies
            dead = s["hosts"][-1]
            faults.append((time.time() - t0, "node"))
            node_processes_and_slurmd(dead, job_id)
        else:
            faults.append((kill_rank(run_dir, job_id, restart) - t0, "crash"))
        wait_until(lambda: len(ends(run_dir)) > restart, 300)
        if dead is not None and restart == 2:
            restore(dead)
        restart += 1
    assert finish(job_id, 600) == "COMPLETED", [e["event"] for e in ends(run_dir)]
    record = ends(run_dir)
    done = record[-1]["time"]
    useful = timeline.build(RunDir(run_dir), done).useful_seconds  # every iteration once, in the start that kept it
    measured_goodput = useful / (done - t0)
    here = goodput.measured(RunDir(run_dir))
    scale = goodput.Scale(accelerators=2, per_node=1, failure_rate=0.0, spares=1)

    def simulated(c: goodput.Costs) -> goodput.Outcome:
        return goodput.simulate(c, scale, "spares", work=ITERS * c.step, interval=50 * c.step, schedule=faults)

    predicted = simulated(here)  # `hpc-mm goodput RUN_DIR`: the run's own measured costs
    ahead = simulated(goodput.with_costs(here, restart_inside=costs.restart_inside, startup=costs.startup))
    kinds = ", ".join(f"{k} at {t:.0f} s" for t, k in faults)
    text = table(
        ["", "measured on the test cluster", "simulator, the run's own costs", "simulator, part 1's restart costs"],
        [
            ["faults", kinds, f"{predicted.interruptions}", f"{ahead.interruptions}"],
            [
                "restarts inside the allocation",
                str(sum(e["event"] == "restarted" for e in record)),
                str(predicted.restarts_inside),
                str(ahead.restarts_inside),
            ],
            [
                "wall-clock, first batch start -> completed",
                f"{done - t0:.0f} s",
                f"{predicted.useful / predicted.goodput:.0f} s",
                f"{ahead.useful / ahead.goodput:.0f} s",
            ],
            [
                "goodput (training kept / wall-clock)",
                f"{measured_goodput:.1%}",
                f"{predicted.goodput:.1%}",
                f"{ahead.goodput:.1%}",
            ],
        ],
    )
    gap = abs(measured_goodput - predicted.goodput) * 100
    text += (
        f"\n\nThe run's measured costs: step {here.step:.3f} s, save {here.save:.2f} s, start-up "
        f"{here.startup:.1f} s, restart inside (last iteration before the fault -> first iteration after) "
        f"{here.restart_inside:.1f} s; part 1's: restart inside {costs.restart_inside:.1f} s, start-up "
        f"{costs.startup:.1f} s. Difference {gap:.1f} points (target <= 5)."
    )
    return text + "\n\n" + ("**within 5 points**" if gap <= 5 else "**missed: more than 5 points apart**")


def finished(run_dir: Path) -> bool:
    record = ends(run_dir)
    return bool(record) and record[-1]["event"] in ("completed", "failed", "gave_up", "cancelled")


def at_scale(costs: goodput.Costs, warm: float, stall: float) -> str:
    """The simulator at 16,384 accelerators, Meta's failure rate, production-sized costs, with this
    run's measured ratios applied to them (the async save's stall, the warm restart)."""
    production = goodput.with_costs(costs, save=60.0, restart_inside=120.0, startup=600.0, step=5.0)
    ratios = goodput.Ratios(stall=stall, warm=warm)
    rows = []
    for spares in (2, 4, 8):
        scale = goodput.Scale(accelerators=16384, per_node=8, spares=spares, queue_wait=600.0)
        row = goodput.levers(production, ratios, [scale], seeds=5, work=7 * 86400.0)[0]
        rows.append(
            [f"{spares} spare nodes ({spares / 2048:.1%} of 2,048)"]
            + [f"{row[k]:.1%}" for k in ("as given", "async save", "warm restart", "both")]
        )
    best = max(float(r[-1].rstrip("%")) for r in rows) / 100
    return (
        table(
            [
                "16,384 accelerators (2,048 nodes x 8), Meta's rate, 10 min queue",
                "production costs (sync save, cold restart)",
                f"+ async save (stall {stall:.3f}x)",
                f"+ warm restart ({warm:.2f}x)",
                "both",
            ],
            rows,
        )
        + "\n\nSeven days simulated, mean of 5 seeds, restart inside on spares; goodput is training kept over "
        "node time held (spares included). Production-sized costs: a 60 s save, 120 s restart inside, 600 s "
        "start-up after a requeue, 5 s step; the ratios are this run's: the warm restart over the cold one "
        "(part 1), the async save's stall over the sync save (bench/checkpoint_save.py's measurement, 1 GiB). "
        "`hpc-mm goodput RUN_DIR --accelerators 16384 --save-seconds 60 --restart-seconds 120 "
        "--startup-seconds 600` gives this for any run.\n\n"
        + verdict("simulated goodput at 16,384 accelerators, both levers", best, 0.95, lambda v: f"{v:.1%}", True)
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        cost_text, costs, warm = restart_costs(folder)
        print(cost_text)
        print()
        print(schedule_run(folder, costs))
        print()
        print(at_scale(costs, warm, stall_ratio()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
