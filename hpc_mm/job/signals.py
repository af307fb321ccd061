"""Signal names, in one table: the job file's choices, the script's traps, the launcher's translation.

Slurm delivers the job's stop signal (`requeue.signal`, USR1 by default) before the time
limit and at preemption; `scancel` and the hard limit deliver TERM. Megatron's
`--exit-signal-handler` listens for SIGTERM only, so every stop reaches the ranks as TERM.
"""

from __future__ import annotations

import signal

from hpc_mm.names import STOP_SIGNALS

DEFAULT_STOP_SIGNAL = "USR1"
# What the ranks receive for any stop: Megatron's exit signal.
EXIT_SIGNAL = signal.SIGTERM
# Signals the launcher forwards (as EXIT_SIGNAL) to the entry: the stop signals, and the
# ones a terminal or a dying parent sends.
FORWARDED = tuple(getattr(signal, f"SIG{name}") for name in (*STOP_SIGNALS, "INT", "HUP"))
# Signals Slurm sends to every process of a step that torchrun does not handle: the
# entry's process tree starts with them ignored and learns of a stop only from us.
IGNORED_BY_ENTRY = (signal.SIGUSR1, signal.SIGUSR2)
# On a hang the launcher's watchdog asks the ranks for their Python stacks with it (the built-in
# trainer answers through faulthandler; other entries through py-spy).
STACK_SIGNAL = signal.SIGUSR2
