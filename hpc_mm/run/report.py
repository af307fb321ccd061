"""A run's figure and summary: loss with restart markers, throughput, and the timeline of the run
(queued, starting, running, saving, stopped) with its goodput. Any Megatron-style entry: the
figures come from metrics.jsonl and events.jsonl, which the launcher writes for every entry."""

from __future__ import annotations

import time

from hpc_mm.errors import Problem, UserError, warn
from hpc_mm.run import layout, snapshot, tensorboard, throughput, timeline
from hpc_mm.run.events import Kind
from hpc_mm.run.format import duration, number, rate
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir
from hpc_mm.run.sweepdir import label as sweep_label

COLORS = {"queued": "#bbbbbb", "starting": "#f2b134", "running": "#4c9f38", "saving": "#2f6db5", "stopped": "#c0392b"}


def summary(run: RunDir) -> dict:
    rows = run.metrics()
    if not rows:
        raise UserError.one(
            "RUN_DIR",
            f"{run.path} has no training iterations in {layout.METRICS} yet",
            "wait for the first iteration (or check the logs: hpc-mm logs RUN_DIR)",
        )
    record = run.events()
    line = timeline.build(run, time.time())
    first = [r.loss for r in rows[:10]]
    last = [r.loss for r in rows[-10:]]
    speeds = [r.samples_per_second for r in rows[-10:] if r.samples_per_second is not None]
    # The job's own, else the log's (an adapter that stops a run early shortens the log's)
    total = _train_iters(run) or next((r.train_iters for r in reversed(rows) if r.train_iters), None)
    return {
        "iterations": rows[-1].iteration,
        "train_iters": total,
        "first_loss": sum(first) / len(first),
        "final_loss": sum(last) / len(last),  # the mean of the last 10 iterations: one number to rank by
        "samples_per_second": sum(speeds) / len(speeds) if speeds else None,
        "throughput": throughput.of_run(run, rows),
        "checkpoints": sorted({e.iteration for e in record if e.kind is Kind.CHECKPOINT and e.iteration is not None}),
        "restarts": line.restarts,
        "lost_iterations": timeline.lost_iterations(run.starts()),
        "step_seconds": timeline.step_seconds(rows),
        "goodput": line.goodput,
        "useful_seconds": line.useful_seconds,
        "held_seconds": line.held_seconds,
        "rows": rows,
        "events": record,
        "timeline": line,
        "code": snapshot.describe(snapshot.recorded(run.path), _last_started(record)),
        "tensorboard": tensorboard.describe(tensorboard.folder_of(run)),
    }


def _last_started(record) -> dict | None:
    started = [e for e in record if e.kind is Kind.STARTED]
    return dict(started[-1].data) if started else None


def _train_iters(run: RunDir) -> int | None:
    try:
        from hpc_mm.job.entries import contract

        return contract(run.job).train_iters(run.job)
    except UserError:
        return None


def summary_text(info: dict) -> str:
    restarts = "; ".join(
        f"{r['cause'] or 'restart'} -> resumed at {r['iteration']}" + (f" ({r['lost']} lost)" if r.get("lost") else "")
        for r in info["restarts"]
    )
    goodput = (
        f"{info['goodput']:.0%} ({duration(info['useful_seconds'])} of training in "
        f"{duration(info['held_seconds'])} on the nodes)"
        if info["goodput"] is not None
        else "-"
    )
    of = f" of {info['train_iters']}" if info["train_iters"] else ""
    speed = f"{info['samples_per_second']:.0f} samples/s" if info["samples_per_second"] else "-"
    rates = info.get("throughput")
    if rates is not None and rates.tokens_per_second:
        speed += f", {rate(rates.tokens_per_second)} tokens/s"
        if rates.tokens_per_second_per_device:
            speed += f" ({rate(rates.tokens_per_second_per_device)} a device)"
        if rates.mfu is not None:
            speed += f", MFU {rates.mfu:.1%}"
    checkpoints = ", ".join(map(str, info["checkpoints"][-8:])) or "-"
    return "\n".join(
        [
            f"iterations    {info['iterations']}{of}",
            f"loss          {number(info['first_loss'])} -> {number(info['final_loss'])} (first/last 10 iterations)",
            f"throughput    {speed}",
            f"checkpoints   {checkpoints}",
            f"restarts      {len(info['restarts'])}" + (f" ({restarts})" if restarts else ""),
            f"lost          {lost_text(info)}",
            f"goodput       {goodput}",
            *([f"code          {info['code']}"] if info.get("code") else []),
            *([f"tensorboard   {info['tensorboard']}"] if info.get("tensorboard") else []),
        ]
    )


def lost_text(info: dict) -> str:
    """The iterations trained twice because a stop came between checkpoints, and their time."""
    lost = info["lost_iterations"]
    if not lost:
        return "0 iterations"
    step = info.get("step_seconds")
    took = f" (about {duration(lost * step)} of training done again)" if step else " (done again)"
    return f"{lost} iteration{'s' if lost != 1 else ''}{took}"


def report(run: RunDir) -> int:
    info = summary(run)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the summary needs no figure
        print(summary_text(info))
        warn(Problem("figure", "not drawn: matplotlib is not installed", "pip install 'hpc-mm[report]'"))
        return 0
    rows, line = info["rows"], info["timeline"]
    fig, (ax_loss, ax_speed, ax_time) = plt.subplots(3, 1, figsize=(9, 8), gridspec_kw={"height_ratios": [3, 2, 1]})
    ax_loss.plot([r.iteration for r in rows], [r.loss for r in rows], lw=1)
    if all(r.loss > 0 for r in rows):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    for it in info["checkpoints"]:
        ax_loss.axvline(it, color="grey", lw=0.5, ls=":")
    for r in info["restarts"]:
        if isinstance(r["iteration"], int):
            ax_loss.axvline(r["iteration"], color="tab:red", lw=1.2)
            ax_loss.annotate(
                f"start {r['start']}: {r['cause'] or '?'}",
                (r["iteration"], 0.95),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="tab:red",
            )
    speed = [r for r in rows if r.samples_per_second is not None]
    ax_speed.plot([r.iteration for r in speed], [r.samples_per_second for r in speed], lw=0.8, color="tab:green")
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
    ax_loss.set_title(f"{run.name}: {info['iterations']} iterations, {len(info['restarts'])} restart(s){goodput}")
    fig.tight_layout()
    out = run.report_figure
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError.one(
            "RUN_DIR", f"cannot write {out} ({exc.strerror})", "check the folder's permissions"
        ) from None
    finally:
        plt.close(fig)
    print(f"{summary_text(info)}\nfigure        {out}")
    return 0


def sweep_rows(tasks: list[RunDir]) -> list[dict]:
    """One row per task of a sweep, best (lowest final loss) first; tasks without iterations last."""
    rows = []
    for task in tasks:
        values = dict(task.info.values or {})
        try:
            info = summary(task)
        except UserError:
            rows.append(
                {
                    "run_dir": str(task.path),
                    "task": task.info.task,
                    "values": values,
                    "iterations": None,
                    "final_loss": None,
                    "goodput": None,
                }
            )
            continue
        rows.append(
            {
                "run_dir": str(task.path),
                "task": task.info.task,
                "values": values,
                "iterations": info["iterations"],
                "final_loss": info["final_loss"],
                "goodput": info["goodput"],
            }
        )
    return sorted(rows, key=lambda r: (r["final_loss"] is None, r["final_loss"] or 0.0, r["task"] or 0))


def report_sweep(folder, tasks: list[RunDir]) -> int:
    """A sweep's tasks side by side: final loss (mean of the last 10 iterations), best first, and a
    figure of every task's loss."""
    rows = sweep_rows(tasks)
    if not any(r["iterations"] for r in rows):
        raise UserError.one(
            "RUN_DIR",
            f"no task of the sweep {folder} has trained yet",
            "wait for the first iterations (hpc-mm status shows the tasks)",
        )
    width = max(len(" ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r["values"].items())) for r in rows)
    print(f"{'TASK':6}{'VALUES':{width + 2}}{'ITERATIONS':12}{'FINAL LOSS':12}GOODPUT")
    for r in rows:
        values = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r["values"].items())
        goodput = f"{r['goodput']:.0%}" if r["goodput"] is not None else "-"
        print(
            f"{str(r['task']):6}{values:{width + 2}}{str(r['iterations'] or '-'):12}{number(r['final_loss']):12}"
            f"{goodput}"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0  # the table is the report; the figure needs matplotlib
    fig, ax = plt.subplots(figsize=(9, 5))
    for task in tasks:
        metrics = task.metrics()
        label = sweep_label(task.info.values or {}, short=True) or task.name
        ax.plot([m.iteration for m in metrics], [m.loss for m in metrics], lw=1, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = SweepDir(folder).report_figure
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError.one(
            "RUN_DIR", f"cannot write {out} ({exc.strerror})", "check the folder's permissions"
        ) from None
    finally:
        plt.close(fig)
    print(f"figure  {out}")
    return 0
