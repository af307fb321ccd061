"""Rules for `notify`, `after` and `throughput` (job/sections.py)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from hpc_mm.errors import Problem, did_you_mean
from hpc_mm.job.rules.common import control_characters
from hpc_mm.job.secrets import redact_url, url_has_secret
from hpc_mm.job.sections import NOTIFY_EVENTS
from hpc_mm.job.spec import JobSpec

_ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
# What a delivery may hold up the run: the end of a job waits for it.
MAX_NOTIFY_SECONDS = 5.0


def check(spec: JobSpec) -> list[Problem]:
    return _notify(spec) + _after(spec)


def _notify(spec: JobSpec) -> list[Problem]:
    n, out = spec.notify, []
    if n.webhook is not None and not _ENV.fullmatch(n.webhook):
        out += _webhook(n.webhook)
    out += control_characters("notify.command", n.command)
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


def _webhook(value: str) -> list[Problem]:
    """A literal URL: http(s), a host, a port that is one, no blank or control character; and nothing in
    it that looks like a credential (that goes in the environment: env:NAME). Never echoed: a URL that
    is wrong may still hold a token."""
    hint = "e.g. https://hooks.example.org/notify, or env:NAME to read it from the environment"
    try:
        url = urlparse(value)
        port_ok = url.port is None or url.port > 0
    except ValueError:
        url, port_ok = None, False
    if url is None or url.scheme not in ("http", "https") or not url.hostname or not port_ok:
        return [Problem("notify.webhook", "is not an http(s) URL with a host (and a valid port)", hint)]
    if re.search(r"[\s\x00-\x1f\x7f]", value):
        return [Problem("notify.webhook", "holds a blank or a control character", "a URL has none: encode it (%20)")]
    if url_has_secret(value):
        return [
            Problem(
                "notify.webhook",
                f"{redact_url(value)} holds what looks like a credential (a password, a key or a token in its path "
                "or query); hpc-mm never writes one into a run directory",
                "write `notify.webhook: env:NAME` and export NAME (the whole URL) before submitting",
            )
        ]
    return []


def _after(spec: JobSpec) -> list[Problem]:
    out = []
    for i, item in enumerate(spec.after):
        out += control_characters(f"after[{i}]", item)
        if not item.strip():
            out.append(Problem(f"after[{i}]", "is empty", "a job id, a run directory or an earlier stage's name"))
    return out
