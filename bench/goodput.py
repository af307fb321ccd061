"""Goodput under real preemption: the same job uninterrupted, and preempted every N seconds.

jobs/tiny-vlm.yaml on 2 nodes x 2 ranks (torchrun, gloo), ITERS iterations (about six minutes
of training here), exclusive in partition `low`. A preemption is an exclusive job in `high` on
the job's nodes, submitted N seconds after the current start's batch script began. Goodput is
the run's useful training time (every iteration counted once, in the start that kept it) over
the time it held nodes (from each batch script's start to its end), so the queue, including
the time the preempting job holds the nodes, is left out; this is `hpc-mm report`'s figure.

Prints Markdown, and draws bench/goodput.png (goodput per N) and copies `hpc-mm report`'s
figure of the N=60 run to bench/goodput-60-report.png.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, verdict  # noqa: E402
from preempt import PY, finish, preempt, started, state, submit, wait_until  # noqa: E402

from hpc_mm.run import timeline  # noqa: E402
from hpc_mm.run.format import duration  # noqa: E402

ITERS = 7000
EVERY = [None, 180, 60]
HERE = Path(__file__).resolve().parent


def run(folder: Path, every: float | None) -> dict:
    run_dir = folder / f"every-{every or 'never'}"
    job_id = submit(run_dir, [f"gpt.train_iters={ITERS}"])
    restart = 0
    while True:
        wait_until(lambda: started(run_dir, restart) or state(job_id) in ("COMPLETED", "FAILED"), 1800)
        if state(job_id) in ("COMPLETED", "FAILED"):
            break
        began = started(run_dir, restart)
        at = began.get("batch_started_at", began["time"]) + (every or 1e9)
        while time.time() < at and state(job_id) == "RUNNING":
            time.sleep(0.5)
        if state(job_id) != "RUNNING" or every is None:
            break
        preempt(run_dir, job_id, restart)
        restart += 1
    assert finish(job_id) == "COMPLETED", run_dir
    line = timeline.build(run_dir, time.time())
    report = subprocess.run([PY, "-m", "hpc_mm", "report", str(run_dir)], capture_output=True, text=True)
    if every == 60 and (run_dir / "report.png").exists():
        shutil.copy(run_dir / "report.png", HERE / "goodput-60-report.png")
    return {
        "every": every,
        "restarts": len(line.restarts),
        "useful": line.useful_seconds,
        "held": line.held_seconds,
        "goodput": line.goodput,
        "report": report.stdout,
    }


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"every {r['every']} s" if r["every"] else "uninterrupted" for r in results]
    ax.bar(labels, [100 * r["goodput"] for r in results], color=["#4c9f38", "#2f6db5", "#c0392b"][: len(results)])
    for i, r in enumerate(results):
        ax.text(i, 100 * r["goodput"] + 1, f"{r['goodput']:.1%}\n{r['restarts']} restarts", ha="center", fontsize=8)
    ax.axhline(90, color="grey", lw=0.6, ls="--")
    ax.axhline(80, color="grey", lw=0.6, ls=":")
    ax.set_ylim(0, 110)
    ax.set_ylabel("goodput, %")
    ax.set_title(f"tiny-vlm, 2 nodes x 2 ranks, {ITERS} iterations, real preemptions")
    fig.tight_layout()
    fig.savefig(HERE / "goodput.png", dpi=100)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        results = [run(Path(d), every) for every in EVERY]
    rows = [
        [
            f"preempted every {r['every']} s" if r["every"] else "uninterrupted",
            str(r["restarts"]),
            duration(r["useful"]),
            duration(r["held"]),
            f"{r['goodput']:.1%}",
        ]
        for r in results
    ]
    print(table(["job", "restarts", "useful training", "held nodes (queue excluded)", "goodput"], rows))
    print(
        "\n![goodput](bench/goodput.png)\n\n`hpc-mm report` of the run preempted every 60 s:\n\n"
        "![report](bench/goodput-60-report.png)"
    )
    plot(results)
    for r in results:
        if r["every"]:
            print(
                verdict(
                    f"goodput, preempted every {r['every']} s",
                    r["goodput"],
                    {180: 0.9, 60: 0.8}[r["every"]],
                    lambda v: f"{v:.1%}",
                    higher_is_better=True,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
