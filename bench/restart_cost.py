"""What one restart costs, piece by piece, over real preemptions on the test cluster.

One job (jobs/tiny-vlm.yaml, 2 nodes x 2 ranks, torchrun, gloo) is preempted PREEMPTIONS times,
each time once its current start has trained a few seconds. For every preemption, from the run's
own record (events.jsonl with the batch shell's clock, metrics.jsonl):

  signal caught by the batch shell -> checkpoint durable (tracker written)
  -> all processes gone (the training step ended) -> requeue issued (`finish` done)
  -> (queue: the preempting job holds the nodes; excluded) -> batch script starts again
  -> training started (preflight done, `hpc-mm launch` running: event `started`)
  -> first resumed iteration

Side by side, in the same run: a hand-written `torchrun` of the same trainer and argv under
`srun` on 2 nodes (bench/launch_overhead.py's command), from `srun` starting to its first
iteration; "training started -> first resumed iteration" is compared against it.

Prints Markdown: median (min-max) of each piece, and the total without the queue.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Allocation, ratio, spread, table, verdict  # noqa: E402
from launch_overhead import commands, one  # noqa: E402
from preempt import finish, first_row_after, preempt, started, submit, wait_until  # noqa: E402

from hpc_mm.run.rundir import read_events  # noqa: E402

PREEMPTIONS = 10
TRAIN_SECONDS = 4  # each start trains this long after its first iteration before it is preempted


def pieces(run_dir: Path, restart: int) -> dict[str, float]:
    record = read_events(run_dir)
    requeued = next(e for e in record if e["event"] == "requeued" and e["restart"] == restart)
    saved = next(
        e for e in record if e["event"] == "checkpoint" and e["restart"] == restart and e.get("reason") == "signal"
    )
    nxt = started(run_dir, restart + 1)
    first = first_row_after(run_dir, nxt["time"])
    signal_at, gone = requeued["signal_at"], requeued["step_ended_at"]
    batch = nxt.get("batch_started_at", nxt["time"])
    return {
        "signal -> checkpoint durable": saved["time"] - signal_at,
        "checkpoint durable -> all processes gone": gone - saved["time"],
        "all processes gone -> requeue issued": requeued["time"] - gone,
        "(queue: preempting job, excluded)": batch - requeued["time"],
        "batch script starts -> training started (preflight, launch)": nxt["time"] - batch,
        "training started -> first resumed iteration": first["time"] - nxt["time"],
    }


def hand_torchrun(folder: Path, repeats: int = 3) -> list[float]:
    """srun start -> first iteration of a hand-written torchrun, same trainer and argv."""
    out = []
    with Allocation(2) as alloc:
        for rep in range(repeats):
            run_dir = folder / f"hand-{rep}"
            out.append(one(commands(alloc, run_dir, 20500 + rep)["hand-written torchrun"], run_dir)[0])
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        hand = hand_torchrun(Path(d))
        run_dir = Path(d) / "run"
        job_id = submit(run_dir, ["gpt.train_iters=1000000"])
        found: dict[str, list[float]] = {}
        for restart in range(PREEMPTIONS):
            wait_until(lambda: started(run_dir, restart))
            begun = started(run_dir, restart)["time"]
            first = wait_until(lambda: first_row_after(run_dir, begun))
            wait_until(lambda: first_row_after(run_dir, first["time"] + TRAIN_SECONDS) or None)
            preempt(run_dir, job_id, restart)
            wait_until(lambda: first_row_after(run_dir, started(run_dir, restart + 1)["time"]))
            for name, value in pieces(run_dir, restart).items():
                found.setdefault(name, []).append(value)
        subprocess.run([sys.executable, "-m", "hpc_mm", "cancel", job_id, "--now"], capture_output=True)
        finish(job_id, 120)
    rows = [[name, spread(values)] for name, values in found.items()]
    total = [sum(found[n][i] for n in found if not n.startswith("(")) for i in range(PREEMPTIONS)]
    rows.append(["**restart cost without the queue**", spread(total)])
    resumed = found["training started -> first resumed iteration"]
    rows.append(["hand-written torchrun under srun: start -> first iteration (no checkpoint to load)", spread(hand)])
    print(table([f"one restart, {PREEMPTIONS} real preemptions", "median (min-max)"], rows))
    print(
        f"\nmedian restart cost {statistics.median(total):.1f} s outside the queue; training started -> "
        f"first resumed iteration is {ratio(resumed, hand)} a hand-written torchrun's start -> first iteration\n"
    )
    med = statistics.median
    print(
        verdict(
            "checkpoint durable -> all processes gone",
            med(found["checkpoint durable -> all processes gone"]),
            1.0,
            lambda v: f"{v:.2f} s",
        )
    )
    print(
        verdict(
            "training started -> first resumed iteration, against hand-written torchrun",
            med(resumed) / med(hand),
            1.2,
            lambda v: f"{v:.2f}x",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
