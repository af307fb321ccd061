"""The contract every entry kind keeps (see job/entries/__init__.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from hpc_mm.errors import Problem
from hpc_mm.names import Watch

if TYPE_CHECKING:
    from hpc_mm.job.spec import Derived, JobSpec


@dataclass(frozen=True)
class Paths:
    """Where a start's files are: the run directory and the checkpoint folder (`--save`/`--load`)."""

    run_dir: Path
    checkpoint_dir: Path
    latest: int | None = None  # the run's newest whole checkpoint at this start (None: none yet)
    latest_name: str | None = None  # its name in the checkpoint folder, where the entry names its own (resume:)
    tensorboard_dir: Path | None = None  # the run's TensorBoard folder (every start writes into it)


class Contract(ABC):
    kind: ClassVar[str]
    trains: ClassVar[bool] = True  # it trains, checkpoints and resumes (a command runs once)
    # It logs a line before each save (Megatron's "saving checkpoint at iteration N"); if not, a save
    # follows the iteration line of every save_interval-th iteration and of the last one.
    announces_saves: ClassVar[bool] = True
    # It writes its checkpoint tracker in place (not atomically): a stop during a save can leave it
    # empty or naming a folder whose save did not finish, and the launcher points it at the newest
    # whole checkpoint before a start.
    tracker_in_place: ClassVar[bool] = False

    def tensorboard(self, spec: JobSpec) -> str:
        """Who writes the run's TensorBoard events: "entry" (Megatron's own --tensorboard-dir), "hpc-mm"
        (node 0's launcher, from the metrics rows it reads: trainers that write none), or "none"."""
        return "hpc-mm" if self.trains and self.watch(spec) is not Watch.LIVENESS else "none"

    def preload(self, spec: JobSpec) -> list[str]:
        """What a standby interpreter imports ahead for this entry, besides the device's modules (a
        module an entry must import in a given order, as MindSpeed's adaptor patches megatron, is
        left to the entry)."""
        return ["hpc_mm.train.loop"] if spec.builtin else []

    def saves(self, spec: JobSpec) -> str:
        """How its saves hold training (validate says it): the built-in trainer's, by default."""
        if spec.resume.dir:
            return f"the entry's own, in {spec.resume.dir} (hpc-mm resumes from them, it does not make them)"
        if not self.trains:
            return "none (it runs once)"
        if spec.checkpoint.async_save:
            return "in the background: training is held only while the state is copied, beside the next step"
        return "synchronous: training waits for every save (checkpoint.async_save: true saves in the background)"

    def saves_on_signal(self, spec: JobSpec) -> bool:
        """Does the entry save a checkpoint when it is asked to stop (Megatron's --exit-signal-handler)?
        If not, a stop loses the iterations since the last periodic save."""
        return False

    def train_iters(self, spec: JobSpec) -> int | None:
        return spec.gpt.train_iters

    def save_interval(self, spec: JobSpec) -> int | None:
        return spec.checkpoint.save_interval if self.trains else None

    def target(self, spec: JobSpec) -> list[str]:
        """What the interpreter (or torchrun) runs: a script, or `-m module`."""
        script = spec.entry.script
        return [script] if script.endswith(".py") else ["-m", script]

    @abstractmethod
    def argv(
        self, spec: JobSpec, paths: Paths, backend: str, world_size: int | None, collective_timeout_minutes: int | None
    ) -> list[str]:
        """The entry's arguments, as launch gives them and `hpc-mm args` prints them."""

    def copies(self, spec: JobSpec) -> dict[str, str]:
        """Files the run directory keeps a copy of (the job-file key that names it -> its name in the run
        directory): every start reads the same configuration whatever happens to the originals, and
        the run's job file points at the copies."""
        return {}

    def start_files(self, spec: JobSpec, paths: Paths) -> dict[str, str]:
        """Files written into the run directory at every start (name -> text), the same on every node."""
        return {}

    def derived(self, spec: JobSpec) -> Derived:
        """The figures `validate` shows: world size, DP, global batch, accumulation."""
        from hpc_mm.job.spec import derive

        return derive(spec)

    def watch(self, spec: JobSpec) -> Watch:
        """What the hang watchdog counts as progress for this entry: its iteration lines where it logs
        Megatron's (a trainer), the job's own pattern, else liveness only: a missing line never ends it."""
        if spec.fault.progress_pattern:
            return Watch.PATTERN
        return Watch.ITERATIONS if self.trains else Watch.LIVENESS

    def resumable(self, spec: JobSpec) -> bool:
        """Does a new start continue from the checkpoints of the last one (then it is requeued by default)?"""
        return self.trains

    def preemption(self, spec: JobSpec) -> str:
        """What a preemption (or the time limit) costs this entry, in one line, as `validate` says it."""
        if self.saves_on_signal(spec):
            return "a preemption loses nothing: it saves on the stop signal and resumes from that checkpoint"
        return f"a preemption loses up to {self.save_interval(spec)} iterations (checkpoint.save_interval)"

    def describe(self, spec: JobSpec) -> str:
        """The contract in one line, as `validate` shows it."""
        if not self.trains:
            return f"{self.kind}: runs once; not requeued unless requeue.enabled"
        if self.saves_on_signal(spec):
            return f"{self.kind}: saves every {self.save_interval(spec)} iterations and on a stop signal"
        return f"{self.kind}: saves every {self.save_interval(spec)} iterations, not on a stop signal"

    def check(self, spec: JobSpec, world_size: int | None) -> list[Problem]:
        """The kind's own rules (the job file's are in job/rules/)."""
        return []

    def advice(self, spec: JobSpec) -> list[Problem]:
        return []
