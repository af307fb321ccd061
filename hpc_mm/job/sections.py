"""The job file's day-two sections: who hears of a run's events (`notify`), what a stage waits for
(`after`, on JobSpec), and what turns samples/s into tokens/s and utilisation (`throughput`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hpc_mm.names import NOTIFIED, NOTIFIED_BY_DEFAULT

# The events a notification may follow, as the job file names them (names.py owns the kinds).
NOTIFY_EVENTS = tuple(k.value for k in NOTIFIED)
DEFAULT_NOTIFY_ON = tuple(k.value for k in NOTIFIED_BY_DEFAULT)


@dataclass(frozen=True)
class Notify:
    # a URL to POST each event to as JSON; `env:NAME` reads it from the environment at delivery
    # (keeps a Slack or Teams token out of the job file and the run directory)
    webhook: Optional[str] = None
    # a shell command run for each event; the event is on its standard input (JSON) and in
    # HPC_MM_EVENT, HPC_MM_RUN, HPC_MM_JOB_ID, HPC_MM_CAUSE, HPC_MM_ITERATION, HPC_MM_LOSS, HPC_MM_LOG
    command: Optional[str] = field(default=None, metadata={"strict": "text"})
    on: list[str] = field(default_factory=lambda: list(DEFAULT_NOTIFY_ON), metadata={"strict": "list"})
    # the most a delivery may hold up the run (webhook and command together)
    timeout_seconds: float = field(default=4.0, metadata={"at_least": 0.1, "bound_hint": "seconds, at most 5"})


@dataclass(frozen=True)
class Throughput:
    # tokens a sample: default gpt.extra.seq_length (Megatron's --seq-length), else the trainer's
    # YAML's seq_length / max_seq_len where it has one
    seq_length: Optional[int] = field(default=None, metadata={"at_least": 1})
    # peak dense TFLOP/s of one device at the training precision (e.g. 312 for an A100's bf16,
    # 989 for an H100 SXM's, 376 for an Ascend 910B's); with the model's size it gives MFU
    peak_tflops: Optional[float] = field(default=None, metadata={"at_least": 0.001})
