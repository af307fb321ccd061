"""The status table: one row a run, a sweep's tasks under one row for their array; numbers for
people (no None, no 17 digits)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_mm.names import RunState
from hpc_mm.run.format import duration, number, rate, text
from hpc_mm.run.sweepdir import label

COLUMNS = (
    "run",
    "job",
    "state",
    "nodes",
    "restarts",
    "iteration",
    "loss",
    "tok/s",
    "checkpoint",
    "elapsed",
    "left",
    "eta",
)


@dataclass(frozen=True)
class RunStatus:
    run_dir: str  # absolute
    name: str
    job_id: str | None
    state: RunState
    reason: str | None  # why it is pending
    exit_code: str | None
    nodes: int
    nodelist: str | None
    restarts: int
    restart_cause: str | None
    last_iteration: int | None
    train_iters: int | None  # None: a command, which runs once
    last_loss: float | None
    last_checkpoint: int | None
    elapsed_seconds: float | None
    time_left_seconds: float | None
    eta_seconds: float | None
    step_seconds: float | None
    last_event: str | None  # of the newest start
    outcome: str | None  # how the newest start ended, if it did and did not requeue
    array: str | None = None
    task: int | None = None
    values: dict | None = None
    lost_iterations: int = 0  # trained past the last checkpoint by starts that were stopped, done again
    tokens_per_second: float | None = None  # over the last logged iterations (run/throughput.py)
    tokens_per_second_per_device: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, 0..1, where the model and the device's peak are known
    after: list | None = None  # a pipeline's stage: what it waits (or waited) for, each {job_id, run_dir, state}
    stragglers: list | None = None  # the newest start's ranks named slow, each {rank, node, ratio}
    standbys: list | None = None  # the newest job's standby pools, each {node, ready, running, idle_rss_mib}

    def to_json(self) -> dict:
        return asdict(self)


def table_row(info: RunStatus) -> list[str]:
    state = info.state + (f" ({info.reason})" if info.reason else "")
    restarts_ = str(info.restarts) + (f" ({info.restart_cause})" if info.restarts and info.restart_cause else "")
    iteration = f"{text(info.last_iteration)}/{text(info.train_iters)}"
    return [
        Path(info.run_dir).name,
        text(info.job_id),
        state,
        text(info.nodes),
        restarts_,
        iteration,
        number(info.last_loss),
        rate(info.tokens_per_second),
        text(info.last_checkpoint),
        duration(info.elapsed_seconds),
        duration(info.time_left_seconds),
        duration(info.eta_seconds),
    ]


def format_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def grouped_rows(infos: list[RunStatus]) -> list[list[str]]:
    """Table rows; the tasks of a sweep under one row for their array, in task order."""
    rows, done = [], set()
    for info in infos:
        if not info.array:
            rows.append(table_row(info))
            continue
        if info.array in done:
            continue
        done.add(info.array)
        tasks = sorted((i for i in infos if i.array == info.array), key=lambda i: i.task or 0)
        states: dict[str, int] = {}
        for task in tasks:
            states[task.state] = states.get(task.state, 0) + 1
        rows.append(
            [
                Path(tasks[0].run_dir).parent.name,
                str(info.array),
                ", ".join(f"{n} {state}" for state, n in states.items()),
            ]
            + [""] * (len(COLUMNS) - 3)
        )
        for task in tasks:
            row = table_row(task)
            rows.append([f"  {row[0]} {label(task.values or {}, short=True)}".rstrip()] + row[1:])
    return rows
