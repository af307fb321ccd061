"""Entries that take Megatron's arguments: MindSpeed-MM's pretrain_vlm.py, pretrain_sora.py,
pretrain_omni.py, posttrain_*.py, pretrain_transformers.py (which also reads an FSDP2 settings
file, `--fsdp2-config-path`, as do pretrain_vlm.py and pretrain_sora.py with --use-torch-fsdp2), and
hpc-mm's built-in trainer.

hpc-mm owns the flags the job file sets (job/spec.py), copies the mm JSON files (and the FSDP2
settings file) into the run directory, and passes `--exit-signal-handler`: the entry saves on a stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpc_mm.errors import Problem
from hpc_mm.job.entries.base import Contract, Paths
from hpc_mm.job.megatron import training_argv
from hpc_mm.job.options import normal

if TYPE_CHECKING:
    from hpc_mm.job.spec import JobSpec

FSDP2_CONFIG_FLAG = "--fsdp2-config-path"  # the FSDP2 settings file (entry.config) of Megatron entries with FSDP2


class MegatronContract(Contract):
    kind = "megatron"

    def saves_on_signal(self, spec: JobSpec) -> bool:
        return True  # --exit-signal-handler, which hpc-mm always passes

    def tensorboard(self, spec: JobSpec) -> str:
        return super().tensorboard(spec) if spec.builtin else "entry"

    def argv(
        self, spec: JobSpec, paths: Paths, backend: str, world_size: int | None, collective_timeout_minutes: int | None
    ) -> list[str]:
        argv = training_argv(
            spec,
            run_dir=paths.run_dir,
            checkpoint_dir=paths.checkpoint_dir,
            backend=backend,
            world_size=world_size,
            collective_timeout_minutes=collective_timeout_minutes,
            tensorboard_dir=paths.tensorboard_dir,
        )
        if spec.entry.config:
            argv += [FSDP2_CONFIG_FLAG, spec.entry.config]
        return argv + spec.entry.extra_args

    def copies(self, spec: JobSpec) -> dict[str, str]:
        out = {f"mm.{name}": f"mm/{name}.json" for name in ("data", "model", "tool") if getattr(spec.mm, name)}
        if spec.entry.config:
            out["entry.config"] = "config/fsdp2_config.yaml"
        return out

    def saves(self, spec: JobSpec) -> str:
        if spec.builtin:
            return super().saves(spec)
        from hpc_mm.job.megatron import ASYNC_FORMAT, checkpoint_format

        if spec.checkpoint.async_save:
            return f"in the background (Megatron's --async-save, --ckpt-format {ASYNC_FORMAT})"
        found = checkpoint_format(spec)
        where = "" if found == ASYNC_FORMAT else f"; it needs --ckpt-format {ASYNC_FORMAT}, this job writes {found}"
        return (
            "synchronous: training waits for every save (checkpoint.async_save: true passes Megatron's "
            f"--async-save{where})"
        )

    def check(self, spec: JobSpec, world_size: int | None) -> list[Problem]:
        out = []
        if spec.checkpoint.async_save and not spec.builtin:
            from hpc_mm.job.megatron import ASYNC_FORMAT, checkpoint_format

            found = checkpoint_format(spec)
            if found is not None and found != ASYNC_FORMAT:
                out.append(
                    Problem(
                        "checkpoint.async_save",
                        f"Megatron's --async-save writes only --ckpt-format {ASYNC_FORMAT}; this job's is {found}",
                        f"set --ckpt-format {ASYNC_FORMAT} (gpt.extra or entry.extra_args), or async_save: false",
                    )
                )
        for i, arg in enumerate(spec.entry.extra_args):
            if arg.split("=", 1)[0] == FSDP2_CONFIG_FLAG:
                out.append(
                    Problem(
                        f"entry.extra_args[{i}]",
                        f"{arg} is set by hpc-mm from the job file",
                        "set entry.config to the file: it is copied into the run directory",
                    )
                )
        for key in spec.gpt.extra:
            if normal(key) == normal(FSDP2_CONFIG_FLAG):
                out.append(
                    Problem(
                        f"gpt.extra.{key}",
                        "is set by hpc-mm from entry.config",
                        "set entry.config to the file: it is copied into the run directory",
                    )
                )
        return out
