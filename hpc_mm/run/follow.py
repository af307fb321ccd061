"""One line of progress while a run goes (`submit --wait`, `hpc-mm local`): iteration/total, loss,
it/s, ETA, restarts. On a terminal the line updates in place; otherwise a plain line is printed
when training moved, at most every PLAIN_EVERY seconds."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from hpc_mm.run import metrics, throughput, timeline
from hpc_mm.run.format import duration, number, rate
from hpc_mm.run.rundir import RunDir

PLAIN_EVERY = 10.0


class Follower:
    def __init__(self, run_dir: Path, train_iters: int, stream: TextIO | None = None, state: str = ""):
        self.run_dir, self.train_iters = Path(run_dir), train_iters
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.state = state
        self._last_text, self._last_print, self._shown = "", 0.0, False
        self.tail = metrics.Tail(RunDir(self.run_dir).metrics_file)

    def iteration(self) -> int:
        rows = self.tail.read()
        return rows[-1].iteration if rows else 0

    def text(self) -> str:
        rows = self.tail.read()
        restarts, _ = timeline.restarts(RunDir(self.run_dir).starts())
        parts = [self.state] if self.state else []
        if rows:
            last, step = rows[-1], timeline.step_seconds(rows)
            parts.append(f"iteration {last.iteration}/{self.train_iters}")
            parts.append(f"loss {number(last.loss)}")
            if step:
                parts.append(f"{1 / step:.1f} it/s")
                speed = throughput.of_run(RunDir(self.run_dir), rows)
                if speed.tokens_per_second:
                    parts.append(f"{rate(speed.tokens_per_second)} tok/s")
                if speed.mfu is not None:
                    parts.append(f"MFU {speed.mfu:.0%}")
                parts.append(f"ETA {duration(step * max(0, self.train_iters - last.iteration))}")
        else:
            parts.append("starting")
        parts.append(f"restarts {restarts}")
        return " | ".join(parts)

    def update(self, state: str | None = None) -> None:
        changed = state is not None and state != self.state
        if state is not None:
            self.state = state
        now = time.monotonic()
        if not (self.tty or changed) and now - self._last_print < PLAIN_EVERY:
            return  # plain output: a line every PLAIN_EVERY seconds, or when the state changes
        text = self.text()
        if text == self._last_text:
            return
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self._last_text, self._last_print = text, now
        self.stream.flush()

    def close(self) -> None:
        """End the progress: the terminal's line stays; plain output gets the last state."""
        if self.tty:
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
            return
        self._last_print = float("-inf")
        self.update()
