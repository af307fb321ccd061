"""The job file: YAML in, `--set` overrides and command-line shortcuts applied, paths made
absolute, the typed job built and checked; and the resolved job written back out.

`load_job()` returns a `JobSpec` only when the whole file is valid; otherwise it raises a
`UserError` listing every problem found, each naming its field.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from hpc_mm.errors import Problem, UserError
from hpc_mm.job import yamlfile
from hpc_mm.job.coerce import build
from hpc_mm.job.entries import CONTRACTS, contract
from hpc_mm.job.rules import validate
from hpc_mm.job.spec import SEED_TOOLS_JSON, JobSpec


def load_job(
    path: str | os.PathLike,
    overrides: list[str] = (),
    nodes: int | None = None,
    nproc_per_node: int | str | None = None,
) -> JobSpec:
    """Read, override, build and validate a job file; raise UserError listing every problem."""
    raw = read_yaml(Path(path))
    apply_overrides(raw, overrides)
    if nodes is not None:
        raw.setdefault("slurm", {})["nodes"] = nodes
        raw.setdefault("distributed", {})["nnodes"] = nodes
    if nproc_per_node is not None:
        raw.setdefault("distributed", {})["nproc_per_node"] = nproc_per_node
    problems: list[Problem] = []
    spec = build(JobSpec, raw, "", problems)
    if problems or spec is None:
        raise UserError(problems)
    source = Path(path).resolve()
    spec = _resolve_kind(dataclasses.replace(spec, source=str(source)))
    spec = _resolve_paths(spec, source.parent)
    problems = validate(spec)
    if problems:
        raise UserError(problems)
    return _with_implied_env(spec)


def read_yaml(path: Path) -> dict:
    field = str(path)
    data = yamlfile.load(yamlfile.read_capped(path, yamlfile.MAX_JOB_BYTES, field), field)
    if data is None:
        raise UserError.one(field, "the job file is empty", "start from one of the files in jobs/")
    if not isinstance(data, dict):
        raise UserError.one(
            field,
            f"the job file must be a mapping of sections, got a {type(data).__name__}",
            "top-level keys are name, entry, slurm, distributed, mm, gpt, ...",
        )
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    """Apply ``--set dotted.key=value`` (value parsed as YAML) to the raw mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError.one("--set", f"{item!r} is not KEY=VALUE", "e.g. --set gpt.lr=1.0e-4")
        value = yamlfile.load_value(text, f"--set {key.strip()}")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError.one(f"--set {key}", f"{part!r} is not a section", "set a leaf key instead")
            node = child
        node[parts[-1]] = value


def _absolute(base: Path, value: str) -> str:
    return str((base / os.path.expanduser(value)).resolve())


def _resolve_kind(spec: JobSpec) -> JobSpec:
    """entry.kind (auto: recognised from the script) and what follows from it: requeue.enabled
    (unset: on for an entry that trains, off for a command)."""
    kind = contract(spec).kind
    resolved = dataclasses.replace(spec, entry=dataclasses.replace(spec.entry, kind=kind))
    enabled = spec.requeue.enabled if spec.requeue.enabled is not None else CONTRACTS[kind].resumable(resolved)
    return dataclasses.replace(
        spec,
        entry=dataclasses.replace(spec.entry, kind=kind),
        requeue=dataclasses.replace(spec.requeue, enabled=enabled),
    )


def _resolve_paths(spec: JobSpec, base: Path) -> JobSpec:
    """Relative paths are relative to the job file's folder (the seed's tools.json to workdir)."""
    workdir = _absolute(base, spec.entry.workdir)
    mm = {name: _absolute(base, getattr(spec.mm, name)) for name in ("data", "model", "tool") if getattr(spec.mm, name)}
    if spec.entry.kind == "megatron":
        mm.setdefault("tool", str(Path(workdir) / SEED_TOOLS_JSON))
    ckpt = spec.checkpoint.dir and _absolute(base, spec.checkpoint.dir)
    pretrained = spec.checkpoint.pretrained and _absolute(base, spec.checkpoint.pretrained)
    config = spec.entry.config and _absolute(base, spec.entry.config)
    resume = spec.resume.dir and _absolute(Path(workdir), spec.resume.dir)  # where the entry runs
    return dataclasses.replace(
        spec,
        resume=dataclasses.replace(spec.resume, dir=resume),
        entry=dataclasses.replace(spec.entry, workdir=workdir, config=config),
        mm=dataclasses.replace(spec.mm, **mm),
        checkpoint=dataclasses.replace(spec.checkpoint, dir=ckpt, pretrained=pretrained),
    )


def _with_implied_env(spec: JobSpec) -> JobSpec:
    gpt = spec.gpt
    if gpt.tensor_model_parallel_size > 1 or gpt.context_parallel_size > 1:
        # Megatron asserts on it with TP or CP > 1.
        return dataclasses.replace(
            spec, env={**spec.env, "CUDA_DEVICE_MAX_CONNECTIONS": spec.env.get("CUDA_DEVICE_MAX_CONNECTIONS", "1")}
        )
    return spec


def job_text(spec: JobSpec) -> str:
    """The resolved job (absolute paths, every default filled), as written into the run directory."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
