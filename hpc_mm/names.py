"""Closed sets of names that several layers compare against, each owned here, at the bottom of the
package (every layer may import it; it imports nothing of hpc-mm). Strings exist only where JSON or
the command line meets the code: `Watch("liveness")`, `watch.value`."""

from __future__ import annotations

from enum import Enum


class Watch(str, Enum):
    """What the hang watchdog counts as a running step making progress (launch/watchdog.py)."""

    ITERATIONS = "iterations"  # Megatron's and the FSDP2 trainer's iteration lines: start-up, step, checkpoint
    PATTERN = "pattern"  # lines matching the job's fault.progress_pattern: start-up, then step
    LIVENESS = "liveness"  # no known progress line: output, CPU time or the progress file moving


class Phase(str, Enum):
    """The phase of a step the watchdog judges, each with its own budget."""

    STARTUP = "startup"
    STEP = "step"
    CHECKPOINT = "checkpoint"
    LIVENESS = "liveness"


# `hpc-mm finish`'s exit code that tells the batch script to start the step again inside the allocation
# (the script and finish speak through it; any other code ends the script with it).
AGAIN_EXIT = 75
