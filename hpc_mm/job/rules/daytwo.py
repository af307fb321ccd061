"""Rules for `notify`, `after` and `throughput` (job/sections.py)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from hpc_mm.errors import Problem, did_you_mean
from hpc_mm.job.rules.common import control_characters
from hpc_mm.job.sections import NOTIFY_EVENTS
from hpc_mm.job.spec import JobSpec

_ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
# What a delivery may hold up the run: the end of a job waits for it.
MAX_NOTIFY_SECONDS = 5.0


def check(spec: JobSpec) -> list[Problem]:
    return _notify(spec) + _after(spec)


def _notify(spec: JobSpec) -> list[Problem]:
    n, out = spec.notify, []
    if n.webhook is not None and not _ENV.match(n.webhook):
        url = urlparse(n.webhook)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.append(
                Problem(
                    "notify.webhook",
                    "is not an http(s) URL",
                    "e.g. https://hooks.slack.com/services/..., or env:NAME to read it from the environment",
                )
            )
    out += control_characters("notify.webhook", n.webhook) + control_characters("notify.command", n.command)
    for i, event in enumerate(n.on):
        if event not in NOTIFY_EVENTS:
            out.append(Problem(f"notify.on[{i}]", f"{event!r} is not an event", did_you_mean(event, NOTIFY_EVENTS)))
    if n.timeout_seconds > MAX_NOTIFY_SECONDS:
        out.append(
            Problem(
                "notify.timeout_seconds",
                f"{n.timeout_seconds} s: a notification may delay the end of a job {MAX_NOTIFY_SECONDS:.0f} s at most",
                "a slow receiver should answer at once and work afterwards",
            )
        )
    return out


def _after(spec: JobSpec) -> list[Problem]:
    out = []
    for i, item in enumerate(spec.after):
        out += control_characters(f"after[{i}]", item)
        if not item.strip():
            out.append(Problem(f"after[{i}]", "is empty", "a job id, a run directory or an earlier stage's name"))
    return out
