"""The entry's output, read as it goes by: every line still reaches the task's log unchanged,
and Megatron's own log lines tell hpc-mm how training goes, for any Megatron-style entry
(MindSpeed-MM's pretrain_vlm.py as well as the built-in trainer):

    iteration      100/   10000 | consumed samples: ... | elapsed time per iteration (ms): ... |
        learning rate: ... | global batch size: ... | lm loss: ... | grad norm: ... |
    saving checkpoint at iteration     100 to DIR in torch format
    successfully saved checkpoint from iteration     100 to DIR [ t 1/1, p 1/1 ]
    successfully loaded checkpoint from DIR [ t 1/1, p 1/1 ] at iteration 100
    [exiting program after receiving SIGTERM.] datetime: ...

and the FSDP2 trainer's (MindSpeed-MM 26), which logs the same iteration line, says nothing before
a save (it saves every `save_interval` iterations and at the end, right after that iteration's
line), and names folders instead of iterations:

    Saved checkpoint to DIR/iter_0000100
    Loaded checkpoint from DIR/iter_0000100        (or DIR/release: converted weights)

They become metrics.jsonl rows and `checkpoint` / `resumed` events (the built-in trainer writes
its own, exact to the bit, so for it they only keep the watch). Lines may carry torchrun's
`[default3]:` or the built-in trainer's `[rank 3] ` prefix.

Other entries move on in other words, and each counts as progress for the hang watchdog: a tqdm or
accelerate progress bar that advanced (` 45%|####5     | 45/100 [00:10<00:12, 4.5it/s]`, redrawn
after a carriage return), verl's step lines (`step:12 - actor/loss:...`) and the job's own
`fault.progress_pattern`. Any output at all is kept apart (`last_output`): where hpc-mm knows no
progress line for an entry, the watchdog judges it alive by its output and CPU time alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir

PREFIX = re.compile(r"^(?:\[default\d+\]:|\[rank \d+\] ?)")
ITERATION = re.compile(r"\biteration\s+(?P<it>\d+)\s*/\s*(?P<total>\d+)\s*\|(?P<rest>.*)")
SAVING = re.compile(r"saving checkpoint at iteration\s+(?P<it>\d+) to (?P<dir>\S+)")
SAVED = re.compile(r"saved checkpoint from iteration\s+(?P<it>\d+) to (?P<dir>\S+)")
LOADED = re.compile(r"successfully loaded checkpoint from (?P<dir>\S+).*\bat iteration (?P<it>\d+)")
SAVED_TO = re.compile(r"\bSaved checkpoint to (?P<dir>\S+)")  # the FSDP2 trainer's
LOADED_FROM = re.compile(r"\bLoaded checkpoint from (?P<dir>\S+)")
_ITER_DIR = re.compile(r"(?:^|/)iter_(?P<it>\d+)/?$")
EXITING = re.compile(r"exiting program after receiving SIGTERM")
BAR = re.compile(r"(?:^|\s|\|)(?P<it>\d+)/(?P<total>\d+) \[")  # tqdm / accelerate: `| 45/100 [00:10<...`
VERL_STEP = re.compile(r"(?:^|\s)step:(?P<it>\d+)\b")  # verl's trainer: `step:12 - actor/...`
# torchrun's agent, the moment it finds a worker dead (it then takes its time tearing the rest down)
RANK_FAILED = re.compile(r"\] failed \(exitcode: (?P<rc>-?\d+)\) local_rank: (?P<rank>\d+)")
ERROR = re.compile(r"^error: (?P<text>.+)$")  # hpc-mm's one-line user errors (the built-in trainer, ...)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def fields(rest: str) -> dict[str, float]:
    """`key: value |` pairs of an iteration line, numbers only."""
    out = {}
    for part in rest.split("|"):
        key, sep, value = part.partition(":")
        value = value.strip()
        if sep and _NUMBER.match(value):
            out[key.strip()] = float(value)
    return out


def _loss(values: dict[str, float]) -> float | None:
    """The training loss: Megatron's `lm loss`, else the first `... loss` that is not the loss scale."""
    if "lm loss" in values:
        return values["lm loss"]
    return next((v for k, v in values.items() if k.endswith("loss") and k != "loss scale"), None)


@dataclass
class Progress:
    """What the watcher has seen; `feed` one line at a time."""

    run: RunDir | None
    start: StartKey | None = None
    checkpoint_dir: Path | None = None
    pretrained: str | None = None
    record: bool = True  # write metrics and events (not for the built-in trainer: it writes its own)
    stop_requested: Callable[[], bool] = lambda: False
    clock: Callable[[], float] = time.time
    iteration: int | None = None  # the last iteration logged
    train_iters: int | None = None
    # An entry that does not announce its saves (the FSDP2 trainer) saves after the iteration
    # lines of every `save_interval`-th iteration and of the last one.
    save_interval: int | None = None
    last_progress: float = field(default_factory=time.time)  # when training last moved
    saving: dict[int, float] = field(default_factory=dict)  # checkpoint saves under way
    exited_on_signal: bool = False
    error: str | None = None  # the entry's first `error:` line
    pattern: re.Pattern | None = None  # fault.progress_pattern
    last_output: float = field(default_factory=time.time)  # when the entry last wrote anything
    steps: int = 0  # progress lines other than Megatron's iterations (bars, verl steps, the pattern)
    final_saved: bool = False  # the checkpoint of the last iteration is committed: training is over
    _marks: dict = field(default_factory=dict)  # the last count each kind of progress line showed
    rank_failed: str | None = None  # torchrun's word that a rank died ("local rank 0, exit code -9")
    on_failure: Callable[[], None] | None = None  # called once, when a rank is reported dead

    def output(self) -> None:
        """The entry wrote something (a whole line or not): it is alive."""
        self.last_output = self.clock()

    def feed(self, text: str) -> None:
        line = PREFIX.sub("", text, count=1)
        now = self.clock()
        self.last_output = now
        if self.pattern is not None and (m := self.pattern.search(line)) is not None:
            self._moved("pattern", _count(m), now)
        if (m := ITERATION.search(line)) is not None:
            self._iteration(int(m["it"]), int(m["total"]), fields(m["rest"]), now)
        elif (m := SAVING.search(line)) is not None:
            self.saving[int(m["it"])] = now
            self.last_progress = now
        elif (m := SAVED.search(line)) is not None:
            self._saved(int(m["it"]), now)
        elif (m := LOADED.search(line)) is not None:
            self._loaded(int(m["it"]), m["dir"], now)
        elif (m := SAVED_TO.search(line)) is not None and (it := _iteration_of(m["dir"])) is not None:
            self._saved(it, now)
        elif (m := LOADED_FROM.search(line)) is not None and (it := _iteration_of(m["dir"])) is not None:
            self._loaded(it, str(Path(m["dir"]).parent), now)
        elif EXITING.search(line):
            self.exited_on_signal = True
        elif self.rank_failed is None and (m := RANK_FAILED.search(line)) is not None and not self.stop_requested():
            self.rank_failed = f"local rank {m['rank']}, exit code {m['rc']}"
            if self.on_failure is not None:
                self.on_failure()
        elif self.error is None and (m := ERROR.match(line.strip())) is not None:
            self.error = m["text"]
        elif (m := BAR.search(line)) is not None:
            self._moved("bar", int(m["it"]), now)
        elif (m := VERL_STEP.search(line)) is not None:
            self._moved("verl", int(m["it"]), now)

    def _moved(self, kind: str, count: int | None, now: float) -> None:
        """A progress line: progress if it shows a new count (a bar redrawn at the same count is not)."""
        if count is not None and self._marks.get(kind) == count:
            return
        self._marks[kind] = count
        self.steps += 1
        self.last_progress = now

    def _iteration(self, iteration: int, total: int, values: dict, now: float) -> None:
        self.iteration, self.train_iters, self.last_progress = iteration, total, now
        if self.save_interval and (iteration % self.save_interval == 0 or iteration >= total):
            self.saving[iteration] = now  # the save follows this line
        loss = _loss(values)
        if not self.record or self.run is None or loss is None:
            return
        step_ms, batch = values.get("elapsed time per iteration (ms)"), values.get("global batch size")
        consumed = values.get("consumed samples")
        self.run.write_metric(
            Metric(
                iteration=iteration,
                loss=loss,
                time=round(now, 3),
                train_iters=total,
                lr=values.get("learning rate"),
                grad_norm=values.get("grad norm"),
                consumed_samples=int(consumed) if consumed is not None else None,
                global_batch_size=int(batch) if batch else None,
                step_ms=step_ms or None,
                samples_per_second=batch * 1000.0 / step_ms if batch and step_ms else None,
            )
        )

    def _saved(self, iteration: int, now: float) -> None:
        started = self.saving.pop(iteration, now)
        self.last_progress = now
        self.final_saved = self.final_saved or bool(self.train_iters and iteration >= self.train_iters)
        if self.record and self.run is not None:
            reason = (
                "signal"
                if self.stop_requested()
                else "final"
                if self.train_iters and iteration >= self.train_iters
                else "interval"
            )
            self.run.record(
                Kind.CHECKPOINT, self.start, iteration=iteration, reason=reason, seconds=round(now - started, 3)
            )

    def _loaded(self, iteration: int, folder: str, now: float) -> None:
        self.last_progress = now
        if self.record and self.run is not None:
            source = "pretrained" if self.pretrained and Path(folder) == Path(self.pretrained) else "run"
            self.run.record(Kind.RESUMED, self.start, iteration=iteration, source=source, path=folder)


def _count(match: re.Match) -> int | None:
    """The step a progress-pattern match shows: its group `it`, else its first group, if a number."""
    groups = match.groupdict()
    value = groups.get("it") if "it" in groups else (match.group(1) if match.re.groups else None)
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _iteration_of(folder: str) -> int | None:
    """The iteration of a checkpoint folder in Megatron's layout: iter_0000100 -> 100, release -> 0."""
    if Path(folder).name == "release":
        return 0
    m = _ITER_DIR.search(folder)
    return int(m["it"]) if m else None
