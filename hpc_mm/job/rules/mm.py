"""Rules for the mm JSON files (--mm-data, --mm-model, --mm-tool): readable, the top-level
sections MindSpeed-MM reads, and a pipeline layer split that matches the job's PP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpc_mm.errors import Problem, UserError
from hpc_mm.job.spec import JobSpec
from hpc_mm.job.yamlfile import MAX_JSON_BYTES, read_capped

_HINTS = {
    "tool": "set mm.tool to a tools.json (top level: profile, memory_profile)",
    "data": "check the path (relative to the job file)",
    "model": "check the path (relative to the job file)",
}


def read_json(where: str, path: Path, hint: str = "") -> Any:
    """A JSON file, capped in size; every failure is a UserError naming `where`."""
    try:
        text = read_capped(path, MAX_JSON_BYTES, where)
    except UserError as exc:
        raise UserError(Problem(p.field, p.message, p.hint or hint) for p in exc.problems) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError.one(
            where, f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise UserError.one(where, f"{path}: values nested too deeply") from None


def check(spec: JobSpec) -> list[Problem]:
    out, docs = [], {}
    for name in ("data", "model", "tool"):
        path = getattr(spec.mm, name)
        if not path:
            continue
        try:
            docs[name] = read_json(f"mm.{name}", Path(path), _HINTS[name])
        except UserError as exc:
            out += exc.problems
    data = docs.get("data")
    if isinstance(data, dict):
        for key in ("dataset_param", "dataloader_param"):
            if key not in data:
                out.append(
                    Problem(
                        "mm.data",
                        f"{spec.mm.data} has no top-level {key!r}",
                        "mm-data JSON needs dataset_param and dataloader_param",
                    )
                )
    elif data is not None:
        out.append(Problem("mm.data", f"{spec.mm.data} must hold a JSON object"))
    model = docs.get("model")
    if model is not None and not isinstance(model, dict):
        out.append(Problem("mm.model", f"{spec.mm.model} must hold a JSON object"))
    elif model is not None:
        out += _pipeline_layers(spec, model.get("text_decoder"), "text_decoder", empty_stages=False)
        encoder = model.get("image_encoder")
        vision = encoder.get("vision_encoder") if isinstance(encoder, dict) else None
        out += _pipeline_layers(spec, vision, "image_encoder.vision_encoder", empty_stages=True)
    return out


def _pipeline_layers(spec: JobSpec, part: Any, name: str, empty_stages: bool) -> list[Problem]:
    """`pipeline_num_layers`: one layer count per pipeline stage, adding up to num_layers. The
    vision encoder may leave stages empty (Qwen2-VL puts all of it on the first); the text
    decoder may not (a stage without layers breaks training)."""
    if not isinstance(part, dict) or "pipeline_num_layers" not in part:
        return []
    layers = part["pipeline_num_layers"]
    pp = spec.gpt.pipeline_model_parallel_size
    key = f"{name}.pipeline_num_layers"
    if not isinstance(layers, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
        return [Problem("mm.model", f"{key} must be a list of integers, got {layers!r}")]
    if len(layers) != pp:
        return [
            Problem(
                "mm.model",
                f"{key} has {len(layers)} entries but pipeline_model_parallel_size is {pp}",
                "give one layer count per pipeline stage",
            )
        ]
    if any(n < 0 for n in layers) or (not empty_stages and any(n == 0 for n in layers)):
        return [
            Problem(
                "mm.model",
                f"{key} {layers} has a stage with no layers",
                "every pipeline stage needs at least one layer",
            )
        ]
    total = part.get("num_layers")
    if isinstance(total, int) and sum(layers) != total:
        return [Problem("mm.model", f"{key} {layers} sums to {sum(layers)}, not num_layers = {total}")]
    return []
