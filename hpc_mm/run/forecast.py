"""`hpc-mm goodput`: the goodput model (run/goodput.py) asked about one job: its costs (measured from
a run directory, or declared), the scales, a table and a figure."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run import goodput, layout
from hpc_mm.run.format import duration
from hpc_mm.run.rundir import RunDir


def _scales(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError.one("--accelerators", f"{text!r} is not a list of positive integers", "e.g. 1024,16384")
    return values


def forecast(args: argparse.Namespace) -> int:
    target = Path(args.target)
    run = RunDir(target) if target.is_dir() and layout.is_run_dir(target) else None
    if run is None and not target.is_file():
        raise UserError.one("TARGET", f"{target} is neither a run directory nor a job file", "pass one of them")
    from hpc_mm.job.jobfile import load_job

    overrides, nodes = getattr(args, "overrides", []), getattr(args, "nodes", None)
    if run is not None:
        spec = load_job(run.job_file, overrides, nodes) if overrides or nodes else run.job
        costs = goodput.measured(run)
    else:
        spec = load_job(target, overrides, nodes)
        costs = goodput.Costs(sources=dict.fromkeys(("save", "stop", "restart_inside", "startup", "step"), "assumed"))
    costs = goodput.with_costs(
        costs,
        save=args.save_seconds,
        stop=args.stop_seconds,
        restart_inside=args.restart_seconds,
        startup=args.startup_seconds,
        step=args.step_seconds,
    )
    if not 0 <= args.node_loss <= 1:
        raise UserError.one("--node-loss", f"{args.node_loss} is not a share between 0 and 1")
    per_node = args.per_node or (
        spec.distributed.nproc_per_node if isinstance(spec.distributed.nproc_per_node, int) else 8
    )
    rate = args.failure_rate or (
        1.0 / (args.mtbf_hours * args.mtbf_at) if args.mtbf_hours else goodput.META_RATE_PER_ACCELERATOR_HOUR
    )
    from hpc_mm.job.entries import contract

    base = goodput.Scale(
        accelerators=1,
        per_node=per_node,
        failure_rate=rate,
        node_loss=args.node_loss,
        preemptions_per_day=args.preemptions_per_day,
        queue_wait=args.queue_wait_minutes * 60,
        spares=args.spares if args.spares is not None else (spec.slurm.spare_nodes or 1),
        saves_on_signal=contract(spec).saves_on_signal(spec),
    )
    scales = [replace(base, accelerators=n) for n in _scales(args.accelerators)]
    rows = goodput.predict(costs, scales, seeds=args.seeds, work=args.days * 86400)
    # The levers: this run's own ratios (or the declared ones) applied to the costs above.
    ratios = goodput.measured_ratios(run, costs) if run is not None else goodput.Ratios()
    if args.stall_ratio is not None or args.warm_ratio is not None:
        ratios = replace(
            ratios,
            stall=ratios.stall if args.stall_ratio is None else args.stall_ratio,
            warm=ratios.warm if args.warm_ratio is None else args.warm_ratio,
            sources={**ratios.sources, **{k: "declared" for k, v in (("stall", args.stall_ratio),
                     ("warm", args.warm_ratio)) if v is not None}},
        )  # fmt: skip
    for name, value in (("--stall-ratio", ratios.stall), ("--warm-ratio", ratios.warm)):
        if not 0 <= value <= 1:
            raise UserError.one(name, f"{value} is not a ratio between 0 and 1")
    pulled = ratios.stall < 1 or ratios.warm < 1
    lever_rows = goodput.levers(costs, ratios, scales, seeds=args.seeds, work=args.days * 86400) if pulled else []
    figure = args.figure or (run.goodput_figure if run is not None else None)
    if figure is not None:
        plot(rows, figure, spec.name)
    if args.json:
        print(
            json.dumps(
                {
                    "costs": costs.to_json(),
                    "scale": {**base.__dict__, "accelerators": None},
                    "rows": rows,
                    "ratios": {"stall": ratios.stall, "warm": ratios.warm, "sources": ratios.sources},
                    "levers": lever_rows,
                    "figure": str(figure) if figure else None,
                },
                indent=1,
            )
        )
        return 0
    print(text(costs, base, rows))
    if lever_rows:
        print("\n" + lever_text(ratios, lever_rows))
    if figure is not None:
        print(f"figure: {figure}")
    return 0


def text(costs: goodput.Costs, base: goodput.Scale, rows: list[dict]) -> str:
    def cost(name: str, value: float) -> str:
        return f"{name} {duration(value) if value >= 1 else f'{value:.2f}s'} ({costs.sources.get(name, 'assumed')})"

    lines = [
        "costs:  "
        + ", ".join(cost(n, getattr(costs, n)) for n in ("save", "stop", "restart_inside", "startup", "step")),
        f"faults: {base.failure_rate * 1e6:.1f} failures per million accelerator-hours ({base.node_loss:.0%} lose a "
        f"node), {base.preemptions_per_day:g} preemptions a day, {base.queue_wait / 60:.0f} min in the queue after a "
        f"requeue, {base.spares} spare node(s)",
        "goodput: training time kept over elapsed time, simulated (closed form in brackets)",
        "",
        f"{'accelerators':>12} {'nodes':>6} {'MTBF':>8} {'interval':>16} {'requeue':>15} {'inside':>15} {'spares':>15}",
    ]
    for r in rows:
        interval = f"{duration(r['interval_seconds'])} ({r['interval_iterations']} it)"
        cells = [f"{r[s]:6.1%} ({r[s + '_closed_form']:5.1%})" for s in goodput.STRATEGIES]
        lines.append(
            f"{r['accelerators']:>12,} {r['nodes']:>6,} {duration(r['mtbf_hours'] * 3600):>8} {interval:>16} "
            + " ".join(f"{c:>15}" for c in cells)
        )
    return "\n".join(lines)


def lever_text(ratios: goodput.Ratios, rows: list[dict]) -> str:
    lines = [
        f"levers: a save holds training {ratios.stall:.2f}x its time ({ratios.sources.get('stall', 'declared')}); "
        f"a restart inside takes {ratios.warm:.2f}x a cold start ({ratios.sources.get('warm', 'declared')})",
        "goodput with spare nodes, simulated: the costs above, then with each lever applied to them",
        "",
        f"{'accelerators':>12} {'as given':>10} {'async save':>11} {'warm restart':>13} {'both':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['accelerators']:>12,} {r['as given']:>10.1%} {r['async save']:>11.1%} "
            f"{r['warm restart']:>13.1%} {r['both']:>8.1%}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError.one(
            "matplotlib", "is not installed (the figure needs it)", "pip install 'hpc-mm[report]'"
        ) from None
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["accelerators"] for r in rows]
    for strategy, color in zip(goodput.STRATEGIES, ("tab:red", "tab:blue", "tab:green")):
        ax.plot(x, [r[strategy] for r in rows], marker="o", color=color, label=f"{strategy} (simulated)")
        ax.plot(x, [r[f"{strategy}_closed_form"] for r in rows], ls="--", color=color, alpha=0.6)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("accelerators")
    ax.set_ylabel("goodput")
    ax.set_title(f"{name}: goodput at scale (dashed: closed form)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
