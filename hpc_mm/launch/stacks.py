"""Every rank's Python stacks into the launcher's log, when the watchdog finds a step hung."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpc_mm.environments.devices import node_name
from hpc_mm.job.signals import STACK_SIGNAL

STUCK_STATES = {"T": "stopped", "t": "stopped", "D": "in uninterruptible I/O", "Z": "dead (zombie)", "X": "dead"}


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


def dump_stacks(ranks: list[dict], builtin: bool) -> None:
    """Every rank's Python stacks into our log: py-spy where installed, else (built-in trainer)
    faulthandler through SIGUSR2, which a stopped process cannot answer."""
    host, spy = node_name(os.environ), _py_spy()
    for r in ranks:
        sys.stderr.write(
            f"hpc-mm watchdog: Python stacks of rank {r['rank']} (pid {r['pid']}, state {r['state']}) on {host}:\n"
        )
        if spy:
            try:
                out = subprocess.run(
                    [spy, "dump", "--nonblocking", "--pid", str(r["pid"])], capture_output=True, text=True, timeout=20
                )
                sys.stderr.write(out.stdout or out.stderr)
            except (OSError, subprocess.TimeoutExpired) as exc:
                sys.stderr.write(f"  py-spy failed: {exc}\n")
        elif builtin and r["state"] not in STUCK_STATES:
            try:
                os.kill(r["pid"], STACK_SIGNAL)
            except ProcessLookupError:
                pass
        else:
            sys.stderr.write("  (install py-spy to see the stacks of this entry)\n")
    sys.stderr.flush()
