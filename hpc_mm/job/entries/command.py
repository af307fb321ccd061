"""Any other script (an inference, an evaluation, feature extraction, data preparation, or a trainer
hpc-mm does not drive: an `accelerate launch` script, verl): no training keys are needed and no
--save/--load is added; the mm files it is given (mm.*) are copied into the run directory and passed
as --mm-data/--mm-model/--mm-tool, its own arguments are entry.extra_args.

It runs once, and is not requeued unless the job says so (requeue.enabled: true), unless it declares
how it resumes (`resume:`: the folder it writes its checkpoints to, the arguments that make it resume
from them): then it is requeued like a trainer, each start after the first given `resume.args`, and a
preemption costs it the steps since its last checkpoint, not the whole run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpc_mm.job.entries.base import Contract, Paths
from hpc_mm.job.schema import flags
from hpc_mm.job.spec import Derived, derive

if TYPE_CHECKING:
    from hpc_mm.job.spec import JobSpec


class CommandContract(Contract):
    kind = "command"
    trains = False

    def train_iters(self, spec: JobSpec) -> int | None:
        return spec.resume.steps if spec.resume.dir else None

    def resumable(self, spec: JobSpec) -> bool:
        return spec.resume.dir is not None

    def save_interval(self, spec: JobSpec) -> int | None:
        return spec.resume.every if spec.resume.dir else None

    def preemption(self, spec: JobSpec) -> str:
        if spec.resume.dir:
            every = f"up to {spec.resume.every} steps" if spec.resume.every else "the steps since its last checkpoint"
            return f"a preemption loses {every}: it resumes from its own checkpoints in {spec.resume.dir}"
        if spec.requeue.enabled:
            return "a preemption starts it again from the beginning (it declares no resume:)"
        return "a preemption loses the whole run: it runs once (declare resume: if it trains)"

    def describe(self, spec: JobSpec) -> str:
        if spec.resume.dir:
            return f"{self.kind}: resumes from its own checkpoints ({spec.resume.dir}); requeued like a trainer"
        return super().describe(spec)

    def derived(self, spec: JobSpec) -> Derived:
        world = derive(spec).world_size
        return Derived(world, None, None, None, None)

    def argv(
        self, spec: JobSpec, paths: Paths, backend: str, world_size: int | None, collective_timeout_minutes: int | None
    ) -> list[str]:
        out = []
        for name in ("data", "model", "tool"):
            if getattr(spec.mm, name):
                out += [*flags(f"mm.{name}"), getattr(spec.mm, name)]
        out += spec.entry.extra_args
        if paths.latest is not None and spec.resume.dir:  # a checkpoint of its own to resume from
            found = str(Path(spec.resume.dir) / paths.latest_name) if paths.latest_name else spec.resume.dir
            out += [a.replace("{checkpoint}", found).replace("{step}", str(paths.latest)) for a in spec.resume.args]
        return out

    def copies(self, spec: JobSpec) -> dict[str, str]:
        return {f"mm.{name}": f"mm/{name}.json" for name in ("data", "model", "tool") if getattr(spec.mm, name)}
