"""Notifications: tell a person (a webhook, a command) what happened to a run, as it happens.

`notify:` in the job file picks the receivers and the events (job/sections.py). The batch
script's `finish` delivers how each start ended (and a quarantine), node 0's watchdog a hang,
`hpc-mm local` its own ends. A delivery never holds the run up for more than
`notify.timeout_seconds` (5 s at most, webhook and command together), never raises, and leaves
one line in RUN_DIR/notifications.jsonl saying whether it arrived. The webhook's URL is never
written anywhere (it may hold a token): only its host is.

The message (JSON; the webhook's body, the command's standard input):
    {"run": NAME, "run_dir": PATH, "job_id": ID, "restart": N, "event": KIND, "cause": ...,
     "reason": ..., "iteration": N, "loss": X, "log": PATH, "time": UNIX_SECONDS, "text": ONE_LINE}
`text` reads well where a chat shows the body as it is (Slack's and Teams' incoming webhooks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from hpc_mm.job.spec import JobSpec
from hpc_mm.run.events import Event
from hpc_mm.run.records import read_objects
from hpc_mm.run.rundir import RunDir, append_line

_RUNNING: set[int] = set()  # process groups of the commands being delivered to


def message(run: RunDir, spec: JobSpec, event: Event) -> dict:
    rows = run.metrics()
    last = rows[-1] if rows else None
    iteration = event.iteration if event.iteration is not None else (last.iteration if last else None)
    log = run.batch_log(spec.name, event.job_id) if event.job_id else run.logs
    said = event.cause or event.reason
    text = f"hpc-mm: {spec.name} (job {event.job_id or '-'}) {event.kind.value}" + (f": {said}" if said else "")
    if iteration is not None:
        text += f"; iteration {iteration}" + (f", loss {last.loss:.4g}" if last else "")
    return {
        "run": spec.name,
        "run_dir": str(run.path.resolve()),
        "job_id": event.job_id,
        "restart": event.restart,
        "event": event.kind.value,
        "cause": event.cause or None,
        "reason": event.reason or None,
        "iteration": iteration,
        "loss": last.loss if last else None,
        "log": str(Path(log).resolve()),
        "time": event.time,
        "text": text,
    }


def deliver(run: RunDir, events: Iterable[Event], spec: JobSpec | None = None) -> list[dict]:
    """Send each event the job asked for; the delivery records (also in notifications.jsonl)."""
    try:
        spec = spec or run.job
    except Exception:  # noqa: BLE001 - a job file that no longer reads: nothing to deliver
        return []
    n = spec.notify
    chosen = [e for e in events if e.kind.value in n.on]
    if not chosen or not (n.webhook or n.command):
        return []
    deadline = time.monotonic() + n.timeout_seconds
    out = []
    for event in chosen:
        body = message(run, spec, event)
        sends = []
        if n.webhook:
            sends.append(("webhook", lambda b=body: _post(n.webhook, b, deadline)))
        if n.command:
            sends.append(("command", lambda b=body: _command(n.command, b, deadline)))
        for to, result in _together(sends, deadline):
            said = {"event": event.kind.value, "job_id": event.job_id, "restart": event.restart, "to": to, **result}
            append_line(run.notifications_file, {"time": time.time(), **said})
            out.append(said)
    return out


def delivered(run_dir: Path) -> list[dict]:
    return read_objects(RunDir(run_dir).notifications_file)


def _together(sends, deadline: float) -> list[tuple[str, dict]]:
    """Run the sends side by side; one still going at the deadline is recorded as timed out, and a
    command still running then is ended with its whole group (it must not outlive the delivery)."""
    results: dict[str, dict] = {}
    threads = []
    for to, send in sends:

        def work(to=to, send=send):
            began = time.monotonic()
            try:
                ok, error = send()
            except Exception as exc:  # noqa: BLE001 - a notification never ends the run
                ok, error = False, f"{type(exc).__name__}: {exc}"
            results[to] = {"ok": ok, "error": error, "seconds": round(time.monotonic() - began, 3)}

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        threads.append((to, thread))
    for _to, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for pid in list(_RUNNING):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return [(to, results.get(to) or {"ok": False, "error": "timed out", "seconds": None}) for to, _ in threads]


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


def webhook_url(value: str) -> str | None:
    """The URL, or None when `env:NAME` names a variable that is not set."""
    if value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    return value


def _post(value: str, body: dict, deadline: float) -> tuple[bool, str | None]:
    url = webhook_url(value)
    if url is None:
        return False, f"{value[4:]} is not set in the job's environment"
    host = urlparse(url).hostname or "?"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=_left(deadline)) as answer:
            answer.read(65536)
            return True, None
    except urllib.error.HTTPError as exc:
        return False, f"{host} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{host}: {reason}"  # the host only: the URL's path may hold a token


def _command(command: str, body: dict, deadline: float) -> tuple[bool, str | None]:
    env = {
        **os.environ,
        "HPC_MM_EVENT": body["event"],
        "HPC_MM_RUN": body["run"],
        "HPC_MM_RUN_DIR": body["run_dir"],
        "HPC_MM_JOB_ID": str(body["job_id"] or ""),
        "HPC_MM_CAUSE": str(body["cause"] or ""),
        "HPC_MM_ITERATION": "" if body["iteration"] is None else str(body["iteration"]),
        "HPC_MM_LOSS": "" if body["loss"] is None else str(body["loss"]),
        "HPC_MM_LOG": body["log"],
        "HPC_MM_TEXT": body["text"],
    }
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its whole group is ended if it runs too long
    )
    _RUNNING.add(proc.pid)
    try:
        _, err = proc.communicate(json.dumps(body).encode(), timeout=_left(deadline))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False, "timed out"
    finally:
        _RUNNING.discard(proc.pid)
    if proc.returncode:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return False, f"exit {proc.returncode}: {last[0][:200]}"
    return True, None
