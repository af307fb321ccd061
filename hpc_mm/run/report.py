"""A run's figure and summary: loss and learning rate per iteration, checkpoints and restarts."""

from __future__ import annotations

from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run import events, metrics
from hpc_mm.run.layout import METRICS


def summary(run_dir: Path) -> dict:
    rows = metrics.rows(run_dir)
    if not rows:
        raise UserError.one("RUN_DIR", f"{run_dir} has no training iterations in {METRICS} yet",
                            "wait for the first iteration (or check the logs: hpc-mm logs RUN_DIR)")
    record = events.read(run_dir)
    first = [r["loss"] for r in rows[:10]]
    last = [r["loss"] for r in rows[-10:]]
    speeds = [r["samples_per_second"] for r in rows[-10:] if isinstance(r.get("samples_per_second"), (int, float))]
    return {"iterations": rows[-1]["iteration"], "first_loss": sum(first) / len(first),
            "last_loss": sum(last) / len(last), "samples_per_second": sum(speeds) / len(speeds) if speeds else None,
            "checkpoints": [e["iteration"] for e in record if e["event"] == "checkpoint" and "iteration" in e],
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
    if all(r["loss"] > 0 for r in rows):
        ax_loss.set_yscale("log")
    with_lr = [r for r in rows if isinstance(r.get("lr"), (int, float))]
    ax_lr.plot([r["iteration"] for r in with_lr], [r["lr"] for r in with_lr], lw=1, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    for it in info["checkpoints"]:
        ax_loss.axvline(it, color="grey", lw=0.5, ls=":")
    for e in info["events"]:
        if e["event"] == "resumed" and isinstance(e.get("iteration"), int):
            ax_loss.axvline(e["iteration"], color="tab:red", lw=1)
    ax_loss.set_title(f"{run_dir.name}: {info['iterations']} iterations, {info['restarts']} restart(s)")
    fig.tight_layout()
    out = run_dir / "report.png"
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError.one("RUN_DIR", f"cannot write {out} ({exc.strerror})", "check the folder's permissions") from None
    speed = f"{info['samples_per_second']:.0f} samples/s" if info["samples_per_second"] else "-"
    print(f"iterations        {info['iterations']}\nloss              {info['first_loss']:.4f} -> {info['last_loss']:.4f} "
          f"(first/last 10 iterations)\nthroughput        {speed}\n"
          f"checkpoints       {info['checkpoints']}\nrestarts          {info['restarts']}\nfigure            {out}")
    return 0
