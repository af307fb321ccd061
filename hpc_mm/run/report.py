"""A run's figure and summary: loss with restart markers, throughput, and the timeline of the run
(queued, starting, running, saving, stopped) with its goodput. Any Megatron-style entry: the
figures come from metrics.jsonl and events.jsonl, which the launcher writes for every entry."""

from __future__ import annotations

import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run import events, layout, metrics, timeline
from hpc_mm.run.format import duration, number

COLORS = {"queued": "#bbbbbb", "starting": "#f2b134", "running": "#4c9f38", "saving": "#2f6db5", "stopped": "#c0392b"}


def summary(run_dir: Path) -> dict:
    rows = metrics.rows(run_dir)
    if not rows:
        raise UserError.one("RUN_DIR", f"{run_dir} has no training iterations in {layout.METRICS} yet",
                            "wait for the first iteration (or check the logs: hpc-mm logs RUN_DIR)")
    record = events.read(run_dir)
    line = timeline.build(run_dir, time.time())
    first = [r["loss"] for r in rows[:10]]
    last = [r["loss"] for r in rows[-10:]]
    speeds = [r["samples_per_second"] for r in rows[-10:] if isinstance(r.get("samples_per_second"), (int, float))]
    total = next((r.get("train_iters") for r in reversed(rows) if r.get("train_iters")), None) or _train_iters(run_dir)
    return {"iterations": rows[-1]["iteration"], "train_iters": total,
            "first_loss": sum(first) / len(first), "last_loss": sum(last) / len(last),
            "samples_per_second": sum(speeds) / len(speeds) if speeds else None,
            "checkpoints": sorted({e["iteration"] for e in record if e["event"] == "checkpoint" and "iteration" in e}),
            "restarts": line.restarts, "goodput": line.goodput, "useful_seconds": line.useful_seconds,
            "held_seconds": line.held_seconds, "rows": rows, "events": record, "timeline": line}


def _train_iters(run_dir: Path) -> int | None:
    from hpc_mm.job.jobfile import load_job

    try:
        return load_job(Path(run_dir) / layout.JOB_FILE).gpt.train_iters
    except UserError:
        return None


def summary_text(info: dict) -> str:
    restarts = "; ".join(f"{r['cause'] or 'restart'} -> resumed at {r['iteration']}" for r in info["restarts"])
    goodput = (f"{info['goodput']:.0%} ({duration(info['useful_seconds'])} of training in "
               f"{duration(info['held_seconds'])} on the nodes)" if info["goodput"] is not None else "-")
    of = f" of {info['train_iters']}" if info["train_iters"] else ""
    speed = f"{info['samples_per_second']:.0f} samples/s" if info["samples_per_second"] else "-"
    checkpoints = ", ".join(map(str, info["checkpoints"][-8:])) or "-"
    return "\n".join([
        f"iterations    {info['iterations']}{of}",
        f"loss          {number(info['first_loss'])} -> {number(info['last_loss'])} (first/last 10 iterations)",
        f"throughput    {speed}",
        f"checkpoints   {checkpoints}",
        f"restarts      {len(info['restarts'])}" + (f" ({restarts})" if restarts else ""),
        f"goodput       {goodput}"])


def report(run_dir: Path) -> int:
    info = summary(run_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError.one("matplotlib", "is not installed", "pip install 'hpc-mm[report]'") from None
    rows, line = info["rows"], info["timeline"]
    fig, (ax_loss, ax_speed, ax_time) = plt.subplots(3, 1, figsize=(9, 8), gridspec_kw={"height_ratios": [3, 2, 1]})
    ax_loss.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], lw=1)
    if all(r["loss"] > 0 for r in rows):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    for it in info["checkpoints"]:
        ax_loss.axvline(it, color="grey", lw=0.5, ls=":")
    for r in info["restarts"]:
        if isinstance(r["iteration"], int):
            ax_loss.axvline(r["iteration"], color="tab:red", lw=1.2)
            ax_loss.annotate(f"restart {r['restart']}: {r['cause'] or '?'}", (r["iteration"], 0.95),
                             xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right", fontsize=7,
                             color="tab:red")
    speed = [r for r in rows if isinstance(r.get("samples_per_second"), (int, float))]
    ax_speed.plot([r["iteration"] for r in speed], [r["samples_per_second"] for r in speed], lw=0.8, color="tab:green")
    ax_speed.set_ylabel("samples/s")
    ax_speed.set_xlabel("iteration")
    origin = min((i.start for i in line.intervals), default=0)
    for state, color in COLORS.items():
        spans = [(i.start - origin, i.end - i.start) for i in line.intervals if i.state == state]
        if spans:
            ax_time.broken_barh(spans, (0, 1), facecolors=color, label=state)
    ax_time.set_yticks([])
    if not line.intervals:
        ax_time.text(0.5, 0.5, "no record of the run's starts", ha="center", va="center", transform=ax_time.transAxes)
    ax_time.set_xlabel("seconds since the run was submitted")
    if line.intervals:
        ax_time.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6))
    goodput = f", goodput {info['goodput']:.0%}" if info["goodput"] is not None else ""
    ax_loss.set_title(f"{run_dir.name}: {info['iterations']} iterations, {len(info['restarts'])} restart(s){goodput}")
    fig.tight_layout()
    out = run_dir / "report.png"
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError.one("RUN_DIR", f"cannot write {out} ({exc.strerror})", "check the folder's permissions") from None
    print(f"{summary_text(info)}\nfigure        {out}")
    return 0
