"""Follow runs: the table of runs under runs/, or one run with its timeline; state from Slurm
(through `query`, in one call for every run), progress from each run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.job import slurmtime
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import checkpoints, events, layout, metrics, timeline
from hpc_mm.run.format import DASH, duration, number, text
from hpc_mm.slurm import query

_LOCAL_STATES = {"started": "RUNNING", "completed": "COMPLETED", "failed": "FAILED", "signal": "STOPPED",
                 "stopped": "STOPPED", "cancelled": "CANCELLED", "gave_up": "GAVE_UP", "requeued": "REQUEUED",
                 "submitted": "STARTING"}
COLUMNS = ("run", "job", "state", "nodes", "restarts", "iteration", "loss", "checkpoint", "elapsed", "left", "eta")


def find_run_dir(target: str | None) -> Path:
    """A run directory from a path, a Slurm job id, or (None) the newest run under runs/."""
    if target is None:
        return layout.newest_run()
    found = layout.find_local_run(target)
    if found:
        return found
    if target.replace("_", "").isdigit():
        log = query.batch_log(target)  # <run dir>/logs/<batch log>, while Slurm remembers the job
        if log and layout.is_run_dir(Path(log).parent.parent):
            return Path(log).parent.parent.resolve()
        raise UserError.one("JOB_ID", f"no run under ./{layout.RUNS} was submitted as job {target}",
                            "pass the run directory instead (printed by submit)")
    raise UserError.one("RUN_DIR", f"{target} is not a run directory (no {layout.JOB_FILE})",
                        "pass the run directory printed by submit, or a job id")


def run_job_id(run_dir: Path) -> str | None:
    """The run's Slurm job: recorded at submit or at start, else (plain sbatch, still queued)
    the queued job whose batch log goes into the run's log folder."""
    job_id = layout.read_run_file(run_dir).get("job_id")
    if job_id:
        return str(job_id)
    queued = query.queued_jobs_writing_to(str(Path(run_dir).resolve() / layout.LOGS))
    return queued[-1] if queued else None


def run_status(run_dir: Path, slurm: dict | None = None, now: float | None = None) -> dict:
    """One run as a row: Slurm's view (`slurm`: this run's entry of `query.jobs`) and the record's."""
    now = now or time.time()
    spec = load_job(run_dir / layout.JOB_FILE)
    record = events.read(run_dir)
    job_id = run_job_id(run_dir)
    if slurm is None and job_id:
        slurm = query.jobs([job_id]).get(job_id)
    rows = metrics.rows(run_dir)
    last = rows[-1] if rows else None
    terminal = next((e for e in reversed(record) if e["event"] in events.TERMINAL), None)
    requeues = [e for e in record if e["event"] == "requeued"]
    # Slurm counts a requeue the moment it happens: a requeued job still waiting shows it.
    restarts = max(events.restarts(record), (slurm or {}).get("restarts") or 0)
    state = (slurm or {}).get("state") or _local_state(record)
    iteration = (last or {}).get("iteration")
    step = timeline.step_seconds(rows)
    running = state == "RUNNING"
    limit = _limit_seconds(spec.slurm.time)
    elapsed = (slurm or {}).get("elapsed_seconds")
    if elapsed is None and running:
        started = next((e["time"] for e in reversed(record) if e["event"] == "started"), None)
        elapsed = now - started if started else None
    left = (slurm or {}).get("left_seconds")
    if left is None and running and limit and elapsed is not None:
        left = limit - elapsed
    return {
        "run_dir": str(run_dir), "name": spec.name, "job_id": job_id, "state": state,
        "reason": (slurm or {}).get("reason") if state == "PENDING" else None,
        "exit_code": (slurm or {}).get("exit_code"), "nodes": (slurm or {}).get("nodes") or spec.nnodes,
        "nodelist": (slurm or {}).get("nodelist"), "restarts": restarts,
        "restart_cause": (requeues[-1].get("cause") if requeues and restarts == events.restarts(record)
                          else "requeued by Slurm" if restarts else None),
        "last_iteration": iteration, "train_iters": spec.gpt.train_iters,
        "last_loss": (last or {}).get("loss"),
        "last_checkpoint": checkpoints.latest_whole(layout.checkpoint_dir(spec, run_dir)),
        "elapsed_seconds": elapsed, "time_left_seconds": left,
        "eta_seconds": step * (spec.gpt.train_iters - iteration) if step and iteration is not None and running else None,
        "step_seconds": step, "last_event": record[-1]["event"] if record else None,
        "outcome": terminal.get("reason") if terminal and terminal["event"] != "requeued" else None,
        **{key: layout.read_run_file(run_dir).get(key) for key in ("array", "task", "values")},
    }


def _limit_seconds(time_text: str) -> float | None:
    try:
        return slurmtime.seconds(time_text)
    except ValueError:
        return None


def _local_state(record: list[dict]) -> str:
    last = next((e["event"] for e in reversed(record) if e["event"] in _LOCAL_STATES), None)
    return _LOCAL_STATES.get(last, "UNKNOWN")


def table_row(info: dict) -> list[str]:
    state = info["state"] + (f" ({info['reason']})" if info.get("reason") else "")
    restarts = str(info["restarts"]) + (f" ({info['restart_cause']})" if info["restarts"] and info.get("restart_cause")
                                        else "")
    iteration = f"{text(info['last_iteration'])}/{info['train_iters']}"
    return [Path(info["run_dir"]).name, text(info["job_id"]), state, text(info["nodes"]), restarts, iteration,
            number(info["last_loss"]), text(info["last_checkpoint"]), duration(info["elapsed_seconds"]),
            duration(info["time_left_seconds"]), duration(info["eta_seconds"])]


def format_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def runs(folder: Path = layout.RUNS) -> list[Path]:
    """Run directories under `folder` (a sweep's tasks included), newest first."""
    found = [p for p in folder.glob("*") if layout.is_run_dir(p)]
    found += [p for sweep in folder.glob("*") if (sweep / layout.SWEEP_FILE).is_file() for p in sweep.glob("task-*")
              if layout.is_run_dir(p)]
    return sorted(found, key=lambda p: layout.read_run_file(p).get("created") or p.stat().st_mtime, reverse=True)


def print_status(target: str | None, as_json: bool = False, show_all: bool = False, limit: int = 20) -> int:
    sweep = layout.find_sweep(target) if target is not None else None
    if target is not None and sweep is None:
        return _print_one(find_run_dir(target), as_json)
    found = sorted(p for p in sweep.glob("task-*") if layout.is_run_dir(p)) if sweep else runs()
    if not found:
        raise UserError.one("RUN_DIR", f"no runs under ./{layout.RUNS}", "submit one, or pass a run directory")
    shown = found if show_all else found[:limit]
    ids = [j for j in (run_job_id(p) for p in shown) if j]
    slurm = query.jobs(ids)
    infos = []
    for path in shown:
        try:
            infos.append(run_status(path, slurm.get(run_job_id(path) or "")))
        except UserError:
            continue  # a run directory whose job file no longer reads: not one to show
    if as_json:
        print(json.dumps(infos, sort_keys=True))
        return 0
    print(format_table(COLUMNS, _grouped_rows(infos)))
    if len(found) > len(shown):
        print(f"({len(found) - len(shown)} older runs: --all shows them)")
    return 0


def _grouped_rows(infos: list[dict]) -> list[list[str]]:
    """Table rows; the tasks of a sweep under one row for their array, in task order."""
    rows, done = [], set()
    for info in infos:
        array = info.get("array")
        if not array:
            rows.append(table_row(info))
            continue
        if array in done:
            continue
        done.add(array)
        tasks = sorted((i for i in infos if i.get("array") == array), key=lambda i: i.get("task") or 0)
        states: dict[str, int] = {}
        for task in tasks:
            states[task["state"]] = states.get(task["state"], 0) + 1
        rows.append([Path(tasks[0]["run_dir"]).parent.name, str(array),
                     ", ".join(f"{n} {state}" for state, n in states.items())] + [""] * (len(COLUMNS) - 3))
        for task in tasks:
            row = table_row(task)
            values = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (task.get("values") or {}).items())
            rows.append([f"  {row[0]} {values}".rstrip()] + row[1:])
    return rows


def _print_one(run_dir: Path, as_json: bool) -> int:
    info = run_status(run_dir)
    line = timeline.build(run_dir, time.time())
    starts = _starts(run_dir)
    if as_json:
        print(json.dumps({**info, "starts": starts, "goodput": line.goodput}, sort_keys=True))
        return 0
    print(format_table(COLUMNS, [table_row(info)]))
    print()
    print(format_table(("start", "job", "began", "ran", "from", "to", "ended", "why"),
                       [[str(s["restart"]), text(s["job_id"]), time.strftime("%m-%d %H:%M:%S", time.localtime(s["time"])),
                         duration(s["seconds"]), text(s["from"]), text(s["to"]), s["ended"], s["why"]] for s in starts]))
    if info["outcome"]:
        print(f"\n{info['last_event']}: {info['outcome']}")
    print(f"run directory: {run_dir}")
    return 0


def _starts(run_dir: Path) -> list[dict]:
    """Each start of the run: when, how long, from and to which iteration, how it ended and why."""
    record = events.read(run_dir)
    rows = metrics.rows(run_dir)
    out = []
    for start in [e for e in record if e["event"] == "started"]:
        restart = start.get("restart", 0)
        end = next((e for e in record if e.get("restart") == restart and e["event"] in events.TERMINAL
                    and e["time"] >= start["time"]), None)
        mine = [r["iteration"] for r in rows if r.get("time", 0) >= start["time"]
                and (end is None or r.get("time", 0) <= end["time"])]
        out.append({"restart": restart, "job_id": start.get("job_id"), "time": start["time"],
                    "seconds": ((end or {}).get("time") or time.time()) - start["time"],
                    "from": start.get("checkpoint"), "to": mine[-1] if mine else None,
                    "ended": end["event"] if end else "running",
                    "why": text((end or {}).get("cause") or (end or {}).get("reason")) if end else DASH})
    return out
