"""Follow runs: the table of runs under runs/, or one run with the timeline of its starts; state
from Slurm (through `query`, one call for every run), progress from each run directory.

A run directory may hold several jobs (a resubmission with --run-dir, a chain); its state is the
newest job's, and its restarts count every start after the first, across all of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job import slurmtime
from hpc_mm.job.entries import contract
from hpc_mm.names import RunState, run_state
from hpc_mm.run import layout, snapshot, throughput, timeline
from hpc_mm.run.events import AGAIN, Kind
from hpc_mm.run.format import DASH, duration, rate, text
from hpc_mm.run.rundir import RunDir, Start
from hpc_mm.run.sweepdir import SweepDir, label
from hpc_mm.run.timeline import lost_iterations
from hpc_mm.slurm import pipeline, query
from hpc_mm.slurm.query import SlurmJob
from hpc_mm.slurm.runs import find, job_of, runs
from hpc_mm.slurm.table import COLUMNS, RunStatus, format_table, grouped_rows, table_row

# A run Slurm does not know (local, or long forgotten): its state from its newest start's record.
_LOCAL_STATES = {
    Kind.STARTED: RunState.RUNNING,
    Kind.EXITED: RunState.RUNNING,
    Kind.COMPLETED: RunState.COMPLETED,
    Kind.FAILED: RunState.FAILED,
    Kind.SIGNAL: RunState.STOPPED,
    Kind.STOPPED: RunState.STOPPED,
    Kind.CANCELLED: RunState.CANCELLED,
    Kind.GAVE_UP: RunState.GAVE_UP,
    Kind.REQUEUED: RunState.REQUEUED,
    Kind.RESTARTED: RunState.RUNNING,  # starting again inside its allocation
    Kind.SUBMITTED: RunState.STARTING,
}


def restarts(starts: list[Start], slurm: SlurmJob | None) -> tuple[int, str | None]:
    """The record's count of restarts (timeline.restarts), and Slurm's: it counts a requeue the
    moment it happens, so a job it requeued itself and that still waits counts already."""
    count, cause = timeline.restarts(starts)
    newest = next((s for s in reversed(starts) if s.began is not None), None)
    if (
        slurm is not None
        and slurm.state.queued
        and slurm.restarts
        and newest is not None
        and newest.began is not None
        and newest.end is None
    ):
        count, cause = count + 1, "requeued by Slurm"
    return count, cause


def run_status(run: RunDir, slurm: SlurmJob | None = None, now: float | None = None) -> RunStatus:
    """One run as a row: Slurm's view of its newest job and its record's."""
    now = now or time.time()
    spec = run.job
    job_id = job_of(run)
    if slurm is None and job_id:
        slurm = query.jobs([job_id]).get(job_id)
    slurm = slurm if slurm is not None and slurm.known else None
    starts = run.starts()
    newest = starts[-1] if starts else None
    rows = run.metrics()
    last = rows[-1] if rows else None
    state = run_state(slurm.state) if slurm else _local_state(newest) if job_id or newest else RunState.RENDERED
    running = state is RunState.RUNNING
    step = timeline.step_seconds(rows)
    elapsed = slurm.elapsed_seconds if slurm else None
    if elapsed is None and running and newest is not None and newest.began:
        elapsed = now - newest.began
    left = slurm.time_left_seconds if slurm else None
    limit = _limit_seconds(spec.slurm.time)
    if left is None and running and limit and elapsed is not None:
        left = limit - elapsed
    count, cause = restarts(starts, slurm)
    end = newest.end if newest else None
    train_iters = contract(spec).train_iters(spec)
    iteration = last.iteration if last else None
    speed = throughput.of_run(run, rows)
    deps = query.jobs(list(run.info.after)) if run.info.after else {}
    outcome = end.reason if end and end.kind not in AGAIN else pipeline.why_cancelled(run, state, deps)
    if state is RunState.RENDERED:
        outcome = f"not submitted: sbatch {run.script}"
    return RunStatus(
        run_dir=str(run.path.resolve()),
        name=spec.name,
        job_id=job_id,
        state=state,
        reason=slurm.reason if slurm and slurm.state.queued else None,
        exit_code=slurm.exit_code if slurm else None,
        nodes=(slurm.nodes if slurm else None) or spec.nnodes,
        nodelist=slurm.nodelist if slurm else None,
        restarts=count,
        restart_cause=cause,
        last_iteration=iteration,
        train_iters=train_iters,
        last_loss=last.loss if last else None,
        last_checkpoint=run.latest_checkpoint(spec),
        elapsed_seconds=elapsed,
        time_left_seconds=left,
        eta_seconds=step * (train_iters - iteration)
        if step and train_iters and iteration is not None and running
        else None,
        step_seconds=step,
        last_event=newest.events[-1].kind.value if newest and newest.events else None,
        outcome=outcome,
        array=run.info.array,
        task=run.info.task,
        values=dict(run.info.values) if run.info.values else None,
        lost_iterations=lost_iterations(starts),
        tokens_per_second=speed.tokens_per_second,
        tokens_per_second_per_device=speed.tokens_per_second_per_device,
        mfu=speed.mfu,
        after=pipeline.waits(run, deps) if run.info.after else None,
        stragglers=[
            {"rank": e.get("rank"), "node": (e.get("nodes") or [None])[0], "ratio": e.get("ratio")}
            for e in newest.all(Kind.STRAGGLER)
        ]
        if newest
        else None,
        standbys=[
            {k: p.get(k) for k in ("node", "ready", "running", "handed_out", "idle_rss_mib")}
            for p in run.standby_states(job_id)
        ]
        if job_id and newest
        else None,
    )


def _limit_seconds(time_text: str) -> float | None:
    try:
        return slurmtime.parse(time_text)
    except ValueError:
        return None


def _local_state(newest: Start | None) -> RunState:
    last = next((e.kind for e in reversed(newest.events) if e.kind in _LOCAL_STATES), None) if newest else None
    return _LOCAL_STATES.get(last, RunState.UNKNOWN)


def _entries(folder: Path) -> list[RunDir | SweepDir]:
    """What the table lists, newest first: each run, and each sweep as one entry."""
    entries, seen = [], set()
    for run in runs(folder):
        sweep = SweepDir.at(run.path.parent) if run.info.array else None
        if sweep is None:
            entries.append(run)
        elif sweep.path not in seen:
            seen.add(sweep.path)
            entries.append(sweep)
    return entries


def statuses(found: list[RunDir]) -> list[RunStatus]:
    ids = {run: job_of(run) for run in found}
    slurm = query.jobs([j for j in ids.values() if j])
    out = []
    for run in found:
        try:
            out.append(run_status(run, slurm.get(ids[run] or "")))
        except UserError as exc:  # its job file no longer reads (edited, or from another hpc-mm): shown, and why
            out.append(unreadable_status(run, ids[run], slurm.get(ids[run] or ""), exc))
    return out


def unreadable_status(run: RunDir, job_id: str | None, slurm: SlurmJob | None, error: UserError) -> RunStatus:
    """A run whose job file does not validate today: what Slurm and run.json still say, and why."""
    known = slurm is not None and slurm.known
    return RunStatus(
        run_dir=str(run.path.resolve()),
        name=run.info.name or run.path.name,
        job_id=job_id,
        state=run_state(slurm.state) if known else RunState.UNKNOWN,
        reason=None,
        exit_code=slurm.exit_code if known else None,
        nodes=(slurm.nodes if known else None) or run.info.nodes or 0,
        nodelist=slurm.nodelist if known else None,
        restarts=0,
        restart_cause=None,
        last_iteration=None,
        train_iters=None,
        last_loss=None,
        last_checkpoint=None,
        elapsed_seconds=slurm.elapsed_seconds if known else None,
        time_left_seconds=None,
        eta_seconds=None,
        step_seconds=None,
        last_event=None,
        outcome=f"its job file no longer validates: {error.problems[0]}",
    )


def print_status(
    target: str | None, as_json: bool = False, show_all: bool = False, limit: int = 20, folder: Path = layout.RUNS
) -> int:
    if target is not None:
        found = find(target, folder)
        if isinstance(found, RunDir):
            return _print_one(found, as_json)
        entries = [found]
    else:
        entries = _entries(folder)
        if not entries:
            raise UserError.one("RUN_DIR", f"no runs under ./{folder}", "submit one, or pass a run directory")
    shown = entries if show_all or target is not None else entries[:limit]
    infos = statuses([r for e in shown for r in (e.tasks() if isinstance(e, SweepDir) else [e])])
    if as_json:
        print(json.dumps([i.to_json() for i in infos], sort_keys=True))
        return 0
    print(format_table(COLUMNS, grouped_rows(infos)))
    if target is not None and isinstance(found, SweepDir):
        _print_best(found)
    if len(entries) > len(shown):
        print(f"({len(entries) - len(shown)} older runs: --all shows them)")
    return 0


def _print_best(sweep: SweepDir) -> None:
    """A sweep's tasks by final loss (the mean of the last 10 iterations), best first."""
    from hpc_mm.run.report import sweep_rows

    ranked = [r for r in sweep_rows(sweep.tasks()) if r["final_loss"] is not None]
    if ranked:
        print(
            "\nbest first: "
            + "; ".join(
                f"task-{r['task']} " + label(r["values"], short=True) + f" final loss {r['final_loss']:.4g}"
                for r in ranked
            )
            + "\n(final loss: the mean of the last 10 iterations, while LOSS above is the last one)"
        )


def _print_one(run: RunDir, as_json: bool) -> int:
    info = run_status(run)
    line = timeline.build(run, time.time())
    starts = start_rows(run)
    code = snapshot.recorded(run.path)
    started = run.starts()[-1].started if run.starts() else None
    if as_json:
        said = code.to_json() if code else _started_code(started)
        print(json.dumps({**info.to_json(), "starts": starts, "goodput": line.goodput, "code": said}, sort_keys=True))
        return 0
    print(format_table(COLUMNS, [table_row(info)]))
    print()
    print(
        format_table(
            ("start", "job", "began", "ran", "from", "to", "lost", "ended", "why"),
            [
                [
                    str(s["start"]),
                    text(s["job_id"]),
                    time.strftime("%m-%d %H:%M:%S", time.localtime(s["time"])) if s["time"] else DASH,
                    duration(s["seconds"]),
                    text(s["from"]),
                    text(s["to"]),
                    text(s["lost"]) if s["lost"] else DASH,
                    s["ended"],
                    s["why"],
                ]
                for s in starts
            ],
        )
    )
    if info.lost_iterations:
        step = f", about {duration(info.lost_iterations * info.step_seconds)}" if info.step_seconds else ""
        print(f"\nlost: {info.lost_iterations} iterations trained past a checkpoint and done again{step}")
    if info.tokens_per_second:
        per_device = (
            f" ({rate(info.tokens_per_second_per_device)} a device)" if info.tokens_per_second_per_device else ""
        )
        mfu = f", MFU {info.mfu:.1%}" if info.mfu is not None else ""
        print(f"\nthroughput: {rate(info.tokens_per_second)} tokens/s{per_device}{mfu}")
    for s in info.stragglers or []:
        print(f"\nstraggler: rank {s['rank']} on {s['node']}, its steps {s['ratio']:.2f}x the others'")
    if info.standbys:
        held = sum(p["idle_rss_mib"] or 0 for p in info.standbys)
        ready = sum(p["ready"] or 0 for p in info.standbys)
        print(f"\nstandbys: {ready} interpreter(s) ready on {len(info.standbys)} node(s), {held:.0f} MiB resident")
    for w in info.after or []:
        where = f" ({Path(w['run_dir']).name})" if w["run_dir"] else ""
        print(f"\nafter: job {w['job_id']}{where}, {w['state']}")
    if info.outcome:
        print(f"\n{info.last_event or 'ended'}: {info.outcome}")
    if described := snapshot.describe(code, dict(started.data) if started else None):
        print(f"code: {described}")
    print(f"run directory: {run.path}")
    return 0


def _started_code(started) -> dict | None:
    """A run without a copy of its code: what its last start found in the checkout."""
    if started is None or not started.get("workdir_commit"):
        return None
    return {"commit": started.get("workdir_commit"), "dirty": bool(started.get("workdir_dirty")), "copied": False}


def start_rows(run: RunDir) -> list[dict]:
    """Each start of the run, numbered across the run directory: which job, when, how long, from
    and to which iteration, how it ended and why."""
    rows = run.metrics()
    out = []
    for start in run.starts():
        end = start.end
        began = start.began
        mine = [
            r.iteration
            for r in rows
            if began is not None and (r.time or 0) >= began and (end is None or (r.time or 0) <= end.time)
        ]
        finished = end.time if end else time.time()
        out.append(
            {
                "start": start.number,
                "job_id": start.job_id,
                "restart": start.key.restart,
                "time": began,
                "seconds": finished - began if began is not None else None,
                "from": start.started.get("checkpoint") if start.started else None,
                "to": mine[-1] if mine else None,
                "lost": end.get("lost_iterations") if end else None,
                "ended": end.kind.value if end else ("running" if began else "queued"),
                "why": text(end.cause or end.reason) if end else DASH,
            }
        )
    return out
