"""Any other script (an inference, an evaluation, feature extraction, data preparation): it runs
once. No training keys are needed, no --save/--load is added, and it is not requeued unless the job
says so (requeue.enabled: true); the mm files it is given (mm.*) are copied into the run directory
and passed as --mm-data/--mm-model/--mm-tool, its own arguments are entry.extra_args."""

from __future__ import annotations

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
        return None

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
        return out + spec.entry.extra_args

    def copies(self, spec: JobSpec) -> dict[str, str]:
        return {f"mm.{name}": f"mm/{name}.json" for name in ("data", "model", "tool") if getattr(spec.mm, name)}
