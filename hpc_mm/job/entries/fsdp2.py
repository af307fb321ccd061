"""MindSpeed-MM's FSDP2 trainer (mindspeed_mm/fsdp/train/trainer.py and its task trainers), driven by
one YAML file (entry.config), whose keys the job file may override (`config:`, `--set
config.training.lr=2e-5`).

At every start hpc-mm writes the YAML the trainer reads (config/trainer.yaml in the run directory):
the file with the job's overrides, and what hpc-mm owns: `training.save` (the run's checkpoint
folder), `training.load` (the converted weights of checkpoint.pretrained until the run has a
checkpoint of its own, then its own, optimizer and RNG included), `training.save_interval` and
`training.train_iters`. The trainer saves only every save_interval and at the end, never on a stop
signal: a stop loses the iterations since the last save, unless entry.save_on_signal runs it
through hpc-mm's adapter (train/fsdp2_adapter.py), which saves with the trainer's own save and exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hpc_mm.errors import Problem, UserError
from hpc_mm.job import fsdp2, yamlfile
from hpc_mm.job.entries.base import Contract, Paths
from hpc_mm.job.spec import Derived, derive

if TYPE_CHECKING:
    from hpc_mm.job.spec import JobSpec

SOURCE = "config/trainer-source.yaml"  # the job's YAML file, as it was at submit
RESOLVED = "config/trainer.yaml"  # what the trainer reads, written at every start
TRACKER = "latest_checkpointed_iteration.txt"
ADAPTER = Path(__file__).resolve().parents[2] / "train" / "fsdp2_adapter.py"
ADAPTER_RELEASES = ("26.0.0", "26.1.0")  # the trainers the adapter was written against (it checks)
ADAPTER_HOOKS = ("train", "train_step")  # what the adapter relies on in TrainEngine (fsdp2_adapter.py)


def engines_overriding_hooks(script: Path) -> list[tuple[str, str, list[str]]]:
    """The train engines a task trainer brings (a class of its folder deriving from TrainEngine) that
    override what the adapter hooks: (class, file, methods). FunASR's FunasrTrainEngine has its own
    train loop and train_step, so the adapter's hook on TrainEngine.train_step never runs there.
    Nothing where the trainer's folder is not on this machine (the login node checks what it has)."""
    import ast

    out = []
    for path in sorted(script.parent.glob("*.py")) if script.parent.is_dir() else []:
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
            if "TrainEngine" not in bases:
                continue
            methods = [f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name in ADAPTER_HOOKS]
            if methods:
                out.append((node.name, str(path), methods))
    return out


def is_hf_weights(folder: str) -> bool:
    """A HuggingFace weights folder (config.json and safetensors), as the trainer tells them from DCP."""
    path = Path(folder)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


class Fsdp2Contract(Contract):
    kind = "fsdp2"
    announces_saves = False
    tracker_in_place = True

    def saves_on_signal(self, spec: JobSpec) -> bool:
        return spec.entry.save_on_signal

    def config(self, spec: JobSpec) -> dict:
        if not spec.entry.config:
            raise UserError.one(
                "entry.config",
                "is required for the FSDP2 trainer: its YAML file",
                "e.g. entry.config: examples/qwen3vl/qwen3vl_30B_config_v1.yaml",
            )
        return fsdp2.merged(fsdp2.read(spec.entry.config), spec.config)

    def train_iters(self, spec: JobSpec) -> int | None:
        if spec.gpt.train_iters:
            return spec.gpt.train_iters
        try:
            value = fsdp2.get(self.config(spec), "training.train_iters", spec.entry.mindspeed_mm)
        except UserError:
            return None
        return int(value) if isinstance(value, int) or str(value).isdigit() else None

    def derived(self, spec: JobSpec) -> Derived:
        """The trainer's own figures: DP = world / (tensor x ring x ulysses), global batch = micro batch
        x DP x accumulation."""
        world = derive(spec).world_size
        try:
            config = self.config(spec)
        except UserError:
            return Derived(world, None, None, None, None)
        release = spec.entry.mindspeed_mm
        if not world:
            return Derived(world, None, None, None, None)
        dp = fsdp2.data_parallel(config, release, world)
        acc = fsdp2._int(fsdp2.get(config, "training.gradient_accumulation_steps", release), 1)
        gbs = fsdp2.global_batch(config, release, world)
        return Derived(world, dp, gbs, acc, dp * acc)

    def describe(self, spec: JobSpec) -> str:
        return f"{super().describe(spec)} (MindSpeed-MM {spec.entry.mindspeed_mm} FSDP2 trainer" + (
            ", through hpc-mm's save-on-signal adapter)" if spec.entry.save_on_signal else ")"
        )

    def target(self, spec: JobSpec) -> list[str]:
        return [str(ADAPTER), spec.entry.script] if spec.entry.save_on_signal else [spec.entry.script]

    def argv(
        self, spec: JobSpec, paths: Paths, backend: str, world_size: int | None, collective_timeout_minutes: int | None
    ) -> list[str]:
        return [str(Path(paths.run_dir) / RESOLVED), *spec.entry.extra_args]

    def copies(self, spec: JobSpec) -> dict[str, str]:
        return {"entry.config": SOURCE} if spec.entry.config else {}

    def start_files(self, spec: JobSpec, paths: Paths) -> dict[str, str]:
        return {RESOLVED: yaml.safe_dump(self.resolved(spec, paths), sort_keys=False)}

    def resolved(self, spec: JobSpec, paths: Paths) -> dict:
        """The trainer's YAML for this start: the file, the job's overrides, and what hpc-mm owns."""
        config = self.config(spec)
        training = config.setdefault("training", {})
        pretrained = spec.checkpoint.pretrained or training.get("load")
        chosen_format = training.get("load_format")  # the user's, kept for the weights they load
        # 26.1.0 names the format (load_format: auto/dcp/hf); 26.0.0 reads DCP only.
        formats = "load_format" in fsdp2.table(spec.entry.mindspeed_mm)["sections"]["training"]["fields"]
        training["save"] = str(paths.checkpoint_dir)
        if paths.latest is not None:  # the run's own checkpoint: all of it, for an exact resume
            training.update(load=str(paths.checkpoint_dir), no_load_optim=False, no_load_rng=False)
            if formats:
                training["load_format"] = "dcp"
        elif pretrained:  # converted weights: `release` DCP (model only), or HuggingFace safetensors
            training["load"] = str(pretrained)
            hf = is_hf_weights(str(pretrained))
            if hf:  # the trainer refuses HF weights with optimizer or RNG state to load
                training.update(no_load_optim=True, no_load_rng=True)
            if formats and not chosen_format:
                training["load_format"] = "hf" if hf else "dcp"
        else:
            training.pop("load", None)
        training["save_interval"] = spec.checkpoint.save_interval
        training["train_iters"] = self.train_iters(spec)
        if spec.checkpoint.async_save and self._saves_async(spec):
            training["save_async"] = True  # the trainer's own background save (DCP's async_save)
        return config

    @staticmethod
    def _saves_async(spec: JobSpec) -> bool:
        return "save_async" in fsdp2.table(spec.entry.mindspeed_mm)["sections"]["training"]["fields"]

    def saves(self, spec: JobSpec) -> str:
        if not self._saves_async(spec):
            return f"synchronous (MindSpeed-MM {spec.entry.mindspeed_mm}'s FSDP2 trainer has no background save)"
        if spec.checkpoint.async_save:
            return "in the background (the FSDP2 trainer's training.save_async: DCP's async save)"
        return "synchronous: training waits for every save (checkpoint.async_save: true sets training.save_async)"

    def check(self, spec: JobSpec, world_size: int | None) -> list[Problem]:
        from hpc_mm.job.megatron import device_hint

        if spec.entry.mindspeed_mm not in fsdp2.releases():
            return [
                Problem(
                    "entry.mindspeed_mm",
                    f"MindSpeed-MM {spec.entry.mindspeed_mm} has no FSDP2 trainer (it came with {fsdp2.releases()[0]})",
                    f"use one of {', '.join(fsdp2.releases())}, or a Megatron entry (pretrain_vlm.py, ...)",
                )
            ]
        if not spec.entry.config:
            return [
                Problem(
                    "entry.config",
                    "is required for the FSDP2 trainer: its YAML file",
                    "e.g. entry.config: examples/qwen3vl/qwen3vl_30B_config_v1.yaml",
                )
            ]
        try:
            config = self.config(spec)
        except yamlfile.NotHere:
            return []  # the cluster's own file: the login node checks it
        except UserError as exc:
            return exc.problems
        errors, _ = fsdp2.check(config, spec.entry.mindspeed_mm)
        if spec.entry.save_on_signal and spec.entry.mindspeed_mm not in ADAPTER_RELEASES:
            errors.append(
                Problem(
                    "entry.save_on_signal",
                    f"hpc-mm's adapter was written against MindSpeed-MM "
                    f"{' and '.join(ADAPTER_RELEASES)}, not {spec.entry.mindspeed_mm}",
                    "set it to false (a stop then loses the work since the last save)",
                )
            )
        if spec.entry.save_on_signal:
            errors += [
                Problem(
                    "entry.save_on_signal",
                    f"{name} ({path}) overrides TrainEngine.{', '.join(methods)}, which hpc-mm's adapter hooks: a "
                    "stop would neither save nor end the ranks",
                    "set it to false (a stop then loses the work since the last save)",
                )
                for name, path, methods in engines_overriding_hooks(Path(spec.entry.workdir) / spec.entry.script)
            ]
        errors = fsdp2.owned_overrides(spec.config) + errors
        errors += fsdp2.arithmetic(config, spec.entry.mindspeed_mm, world_size, device_hint(spec))
        if world_size and spec.gpt.global_batch_size:
            gbs = fsdp2.global_batch(config, spec.entry.mindspeed_mm, world_size)
            if gbs != spec.gpt.global_batch_size:
                errors.append(
                    Problem(
                        "gpt.global_batch_size",
                        f"{spec.gpt.global_batch_size} is not the trainer's "
                        f"micro_batch_size x DP x gradient_accumulation_steps = {gbs} on {world_size} "
                        "ranks",
                        "change training.micro_batch_size or gradient_accumulation_steps",
                    )
                )
        if not self.train_iters(spec):
            errors.append(
                Problem(
                    "gpt.train_iters",
                    "is not set, and the trainer's YAML has no training.train_iters",
                    "set one of them",
                )
            )
        return errors

    def advice(self, spec: JobSpec) -> list[Problem]:
        try:
            config = self.config(spec)
        except UserError:
            return []
        _, warnings = fsdp2.check(config, spec.entry.mindspeed_mm)
        load = config.get("training", {}).get("load") if isinstance(config.get("training"), dict) else None
        if load and not spec.checkpoint.pretrained:
            warnings.append(
                Problem(
                    "config.training.load",
                    f"{load} is loaded as checkpoint.pretrained: until the run has a checkpoint of its own",
                    "set checkpoint.pretrained to say so",
                )
            )
        if not spec.entry.save_on_signal:
            warnings.append(
                Problem(
                    "entry.save_on_signal",
                    "is false: the FSDP2 trainer saves only every "
                    f"checkpoint.save_interval = {spec.checkpoint.save_interval} (iterations), so a "
                    "stop (preemption, time limit) loses what was trained since the last save",
                    "set entry.save_on_signal: true (hpc-mm's adapter saves on a stop), or a shorter save_interval",
                )
            )
        return warnings
