"""MindSpeed-MM's FSDP2 trainer's YAML file, checked the way the trainer reads it, before anything
queues: against the option table of its release (fsdp2_options-<release>.json, made from the
trainer's argument classes by scripts/fsdp2-options), and with the parallel arithmetic the trainer
does at start.

The trainer's classes decide what an unknown key means: most keep it (26.1.0: silently; 26.0.0:
with a warning in the log), and model plugins and task trainers read keys of their own, so here it
is a warning (with a did-you-mean when it is close to a known key); a class that refuses unknown
keys (a plain dataclass such as training.quantization_plan) refuses them here too, as an error.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from pathlib import Path
from typing import Any

from hpc_mm.errors import Problem, UserError
from hpc_mm.job import yamlfile

TABLES = Path(__file__).resolve().parent
# The keys hpc-mm sets in the trainer's YAML from the job file (the trainer's own are refused in
# `config:`): where it saves and what it loads, how often it saves, how long it trains.
OWNED = {
    "training.save": "checkpoint.dir",
    "training.load": "checkpoint.dir (or checkpoint.pretrained)",
    "training.save_interval": "checkpoint.save_interval",
    "training.train_iters": "gpt.train_iters",
}
PARALLEL = ("tensor_parallel_size", "ring_attention_size", "ulysses_parallel_size")


@functools.lru_cache(maxsize=None)
def table(release: str) -> dict:
    """The option table of a release: {"sections": {path: {"class", "extra", "fields"}}}."""
    return json.loads((TABLES / f"fsdp2_options-{release}.json").read_text())


def releases() -> list[str]:
    return sorted(p.stem.split("-", 1)[1] for p in TABLES.glob("fsdp2_options-*.json"))


def read(path: str) -> dict:
    """The trainer's YAML file (the job file's caps and YAML rules apply: anchors, no duplicate keys)."""
    data = yamlfile.load(yamlfile.read_capped(Path(path), yamlfile.MAX_JOB_BYTES, "entry.config"), "entry.config")
    if not isinstance(data, dict):
        raise UserError.one(
            "entry.config",
            f"{path} must hold the trainer's sections (parallel, data, model, training, ...)",
            "start from MindSpeed-MM's example YAML of the model",
        )
    return data


def merged(base: dict, overrides: dict) -> dict:
    """`base` with the job file's `config:` overrides laid over it, key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def owned_overrides(overrides: dict) -> list[Problem]:
    out = []
    for key, job_key in OWNED.items():
        section, name = key.split(".")
        if isinstance(overrides.get(section), dict) and name in overrides[section]:
            out.append(Problem(f"config.{key}", "is set by hpc-mm from the job file", f"set {job_key} instead"))
    return out


def check(config: dict, release: str, where: str = "config") -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of `config` against the release's option table."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    _section(config, "", table(release)["sections"], where, errors, warnings)
    return errors, warnings


def _section(values: Any, path: str, sections: dict, where: str, errors: list, warnings: list) -> None:
    spec = sections[path]
    at = f"{where}.{path}" if path else where
    if values is None:
        return
    if not isinstance(values, dict):
        errors.append(Problem(at, f"expected a mapping of keys, got {type(values).__name__}"))
        return
    fields = spec["fields"]
    for name, field in fields.items():
        if field.get("required") and name not in values and field["type"] != "section" and path:
            errors.append(Problem(f"{at}.{name}", f"is required by the trainer ({spec['class']})"))
    for key, value in values.items():
        here = f"{at}.{key}"
        if key not in fields:
            _unknown(key, here, fields, spec, errors, warnings)
        elif fields[key]["type"] == "section":
            _section(value, fields[key]["section"], sections, where, errors, warnings)
        else:
            problem = value_problem(fields[key], value)
            if problem:
                errors.append(Problem(here, problem, f"the trainer's {spec['class']} takes {describe(fields[key])}"))


def _unknown(key: str, where: str, fields: dict, spec: dict, errors: list, warnings: list) -> None:
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.8)
    if spec["extra"] == "refuse":
        errors.append(
            Problem(
                where,
                f"is not a key of the trainer's {spec['class']}, which refuses unknown keys",
                f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(fields)}",
            )
        )
        return
    # Kept as written (26.1.0 silently, 26.0.0 with a warning): model plugins and task trainers read
    # keys of their own (model.gdn_implementation, parallel.context_parallel_size), so an unknown key
    # is not an error, even one close to a known key; a misspelt one has no effect.
    warnings.append(
        Problem(
            where,
            f"is not a key of the trainer's {spec['class']}: the trainer keeps it, and it has an effect "
            "only if a plugin reads it",
            f"did you mean {close[0]!r}?" if close else "check the spelling",
        )
    )


def describe(field: dict) -> str:
    kind = field["type"]
    if kind == "literal":
        return "one of " + ", ".join(map(repr, field["choices"]))
    if kind == "union":
        return " or ".join(describe(p) for p in field["of"])
    return {
        "int": "an integer",
        "float": "a number",
        "str": "text",
        "bool": "true or false",
        "list": "a list",
        "dict": "a mapping",
        "any": "a value",
    }.get(kind, kind)


def value_problem(field: dict, value: Any) -> str | None:
    if value is None:
        return None if field.get("optional") or field.get("default") is None else "cannot be null"
    kind = field["type"]
    if kind == "union":
        return (
            None
            if any(value_problem(p, value) is None for p in field["of"])
            else (f"{value!r} is not {describe(field)}")
        )
    if kind == "literal":
        return None if value in field["choices"] else f"{value!r} is not {describe(field)}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and value.isdigit()
        return None if ok else f"{value!r} is not an integer"
    if kind == "float":
        try:
            ok = not isinstance(value, (bool, list, dict)) and math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"{value!r} is not a number"
    if kind == "str":
        return None if isinstance(value, str) else f"{value!r} is not text"
    if kind == "list":
        return None if isinstance(value, list) else f"{value!r} is not a list"
    if kind == "dict":
        return None if isinstance(value, dict) else f"{value!r} is not a mapping"
    return None


def get(config: dict, key: str, release: str) -> Any:
    """`section.name` of `config`, else the trainer's default for it."""
    section, _, name = key.rpartition(".")
    node = config
    for part in section.split(".") if section else []:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and name in node:
        return node[name]
    return table(release)["sections"].get(section, {}).get("fields", {}).get(name, {}).get("default")


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def arithmetic(config: dict, release: str, world_size: int | None, device: str) -> list[Problem]:
    """The trainer's ParallelArguments checks at start, against the world size the job will have."""
    if not world_size:
        return []
    p = {name: _int(get(config, f"parallel.{name}", release), 1) for name in PARALLEL}
    sizes = " x ".join(f"{name} {p[name]}" for name in PARALLEL)
    shard = get(config, "parallel.fully_shard_parallel_size", release)
    fsdp = world_size // max(1, p["tensor_parallel_size"]) if shard in (None, "auto") else _int(shard, 0)
    out = []
    if p["tensor_parallel_size"] != 1:
        out.append(
            Problem(
                "config.parallel.tensor_parallel_size",
                f"is {p['tensor_parallel_size']}; the FSDP2 trainer supports only 1",
                "shard with fully_shard_parallel_size instead",
            )
        )
    product = math.prod(p.values())
    if product < 1 or world_size % product:
        out.append(
            Problem(
                "config.parallel",
                f"world size {world_size} is not divisible by {sizes} = {product}",
                "change the parallel sizes or the number of nodes/devices",
            )
        )
        return out
    if fsdp < 1 or world_size % (p["tensor_parallel_size"] * fsdp):
        out.append(
            Problem(
                "config.parallel.fully_shard_parallel_size",
                f"{fsdp} does not divide world size "
                f"{world_size} (with tensor_parallel_size {p['tensor_parallel_size']})",
                "use auto",
            )
        )
    elif fsdp < p["ring_attention_size"] * p["ulysses_parallel_size"]:
        out.append(
            Problem(
                "config.parallel.fully_shard_parallel_size",
                f"{fsdp} is smaller than ring_attention_size "
                f"x ulysses_parallel_size = {p['ring_attention_size'] * p['ulysses_parallel_size']}",
            )
        )
    dp = world_size // product
    declared = get(config, "parallel.data_parallel_size", release)
    if declared is not None and _int(declared, -1) != dp:
        out.append(
            Problem(
                "config.parallel.data_parallel_size",
                f"{declared} is not world size / ({sizes}) = {dp}",
                "leave it unset: the trainer derives it",
            )
        )
    ep = _int(get(config, "parallel.expert_parallel_size", release), 1)
    if ep < 1 or world_size % ep:
        out.append(Problem("config.parallel.expert_parallel_size", f"{ep} does not divide world size {world_size}"))
    if p["ring_attention_size"] != 1 and device != "npu":
        out.append(
            Problem(
                "config.parallel.ring_attention_size",
                "ring attention runs only on NPUs",
                "set it to 1, or run on Ascend NPUs",
            )
        )
    return out


def data_parallel(config: dict, release: str, world_size: int) -> int:
    """world size / (tensor x ring attention x ulysses), as the trainer derives DP."""
    p = {name: _int(get(config, f"parallel.{name}", release), 1) for name in PARALLEL}
    return world_size // max(1, math.prod(p.values()))


def global_batch(config: dict, release: str, world_size: int) -> int:
    """micro_batch_size x DP x gradient_accumulation_steps, as the trainer computes it."""
    dp = data_parallel(config, release, world_size)
    mbs = _int(get(config, "training.micro_batch_size", release), 1)
    return mbs * dp * _int(get(config, "training.gradient_accumulation_steps", release), 1)
