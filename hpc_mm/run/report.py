"""A run's figure and summary: loss and learning rate per iteration, checkpoints and restarts."""

from __future__ import annotations

import json
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run import events
from hpc_mm.run.layout import METRICS


def summary(run_dir: Path) -> dict:
    path = run_dir / METRICS
    if not path.exists():
        raise UserError.one("RUN_DIR", f"{run_dir} has no {METRICS}", "report works on runs of the built-in trainer")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    if not rows:
        raise UserError.one("RUN_DIR", f"{path} is empty", "wait for the first iteration")
    record = events.read(run_dir)
    first = [r["loss"] for r in rows[:10]]
    last = [r["loss"] for r in rows[-10:]]
    return {"iterations": rows[-1]["iteration"], "first_loss": sum(first) / len(first),
            "last_loss": sum(last) / len(last), "samples_per_second": sum(r["samples_per_second"] for r in rows[-10:]) / len(last),
            "checkpoints": [e["iteration"] for e in record if e["event"] == "checkpoint"],
            "restarts": max((e.get("restart", 0) for e in record), default=0), "rows": rows, "events": record}


def report(run_dir: Path) -> int:
    info = summary(run_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError.one("matplotlib", "is not installed", "pip install 'hpc-mm[report]'") from None
    rows = info["rows"]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax_loss.set_ylabel("lm loss")
    ax_loss.set_yscale("log")
    ax_lr.plot([r["iteration"] for r in rows], [r["lr"] for r in rows], lw=1, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    for it in info["checkpoints"]:
        ax_loss.axvline(it, color="grey", lw=0.5, ls=":")
    for e in info["events"]:
        if e["event"] == "resumed":
            ax_loss.axvline(e["iteration"], color="tab:red", lw=1)
    ax_loss.set_title(f"{run_dir.name}: {info['iterations']} iterations, {info['restarts']} restart(s)")
    fig.tight_layout()
    out = run_dir / "report.png"
    fig.savefig(out, dpi=100)
    print(f"iterations        {info['iterations']}\nloss              {info['first_loss']:.4f} -> {info['last_loss']:.4f} "
          f"(first/last 10 iterations)\nthroughput        {info['samples_per_second']:.0f} samples/s\n"
          f"checkpoints       {info['checkpoints']}\nrestarts          {info['restarts']}\nfigure            {out}")
    return 0
