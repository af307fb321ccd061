"""Rules for the mm JSON files (--mm-data, --mm-model, --mm-tool): readable, the top-level
sections MindSpeed-MM reads, and a pipeline layer split that matches the job's PP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpc_mm.errors import Problem, UserError
from hpc_mm.job.spec import SEED_TOOLS_JSON, JobSpec
from hpc_mm.job.yamlfile import MAX_JSON_BYTES, NotHere, read_capped

_HINTS = {
    "tool": "set mm.tool to a tools.json (top level: profile, memory_profile)",
    "data": "check the path (relative to the job file)",
    "model": "check the path (relative to the job file)",
}


def read_json(where: str, path: Path, hint: str = "") -> Any:
    """A JSON file (or YAML, by its suffix), capped in size; every failure is a UserError naming `where`."""
    try:
        text = read_capped(path, MAX_JSON_BYTES, where)
    except NotHere:
        raise
    except UserError as exc:
        raise UserError(Problem(p.field, p.message, p.hint or hint) for p in exc.problems) from None
    if path.suffix in (".yaml", ".yml"):  # MindSpeed-MM reads YAML mm files too (qwen3vl)
        from hpc_mm.job.yamlfile import load

        return load(text, where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError.one(
            where, f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise UserError.one(where, f"{path}: values nested too deeply") from None


def _default_tool_elsewhere(spec: JobSpec) -> bool:
    """mm.tool is the seed's default inside entry.workdir, a checkout this machine does not have (it
    may exist only on the compute nodes: that is a warning of its own, not an error here)."""
    workdir = Path(spec.entry.workdir)
    return Path(spec.mm.tool) == workdir / SEED_TOOLS_JSON and not workdir.is_dir()


def check(spec: JobSpec) -> list[Problem]:
    out, docs = [], {}
    for name in ("data", "model", "tool"):
        path = getattr(spec.mm, name)
        if not path or (name == "tool" and _default_tool_elsewhere(spec)):
            continue
        try:
            docs[name] = read_json(f"mm.{name}", Path(path), _HINTS[name])
        except NotHere:
            continue  # the cluster's own file: the login node checks it
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
        for name, empty_stages in PIPELINED_PARTS:
            out += _pipeline_layers(spec, _part(model, name), name, empty_stages)
        experts = _part(model, "text_decoder.num_experts")
        ep = spec.gpt.extra.get("expert_model_parallel_size", 1)
        if _is_int(experts) and _is_int(ep) and ep >= 1 and experts % ep:
            out.append(
                Problem(
                    "mm.model",
                    f"text_decoder.num_experts {experts} is not divisible by expert_model_parallel_size {ep}",
                    "every expert-parallel rank holds as many experts",
                )
            )
    return out


# The parts of a MindSpeed-MM model that split over pipeline stages (`pipeline_num_layers`), and
# whether a stage may hold none of a part's layers. MindSpeed-MM handles `local_num_layers == 0`
# on purpose for the VLM parts (InternVL2 26B/76B leave decoder stages empty, Qwen2-VL puts the
# whole vision encoder on the first stage); a Sora-family predictor's stages each need layers.
PIPELINED_PARTS = (
    ("text_decoder", True),
    ("image_encoder.vision_encoder", True),
    ("audio_encoder.audio_encoder", True),
    ("predictor", False),
)


def _part(model: dict, dotted: str) -> Any:
    node: Any = model
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _is_int(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _pipeline_layers(spec: JobSpec, part: Any, name: str, empty_stages: bool) -> list[Problem]:
    """`pipeline_num_layers`: a layer count per pipeline stage, or with virtual pipeline stages one
    such list per virtual stage (`[[0, 0, 0, 1], [4, 4, 4, 4], [4, 4, 4, 3]]`: VPP 3 x PP 4), adding
    up to num_layers."""
    pp = spec.gpt.pipeline_model_parallel_size
    key = f"{name}.pipeline_num_layers"
    if pp <= 1 or not isinstance(part, dict):
        return []  # MindSpeed-MM reads the layout only with pipeline parallelism (wan2.1's has 4 stages, PP 1)
    if "pipeline_num_layers" not in part:
        if empty_stages:
            return []
        return [
            Problem(
                "mm.model",
                f"{key} is required with pipeline_model_parallel_size {pp}",
                f"give one {name} layer count per stage, adding up to num_layers",
            )
        ]
    layers = part["pipeline_num_layers"]
    virtual = isinstance(layers, list) and bool(layers) and all(isinstance(row, list) for row in layers)
    rows = layers if virtual else [layers]
    if not isinstance(layers, list) or not all(isinstance(r, list) and all(_is_int(n) for n in r) for r in rows):
        return [
            Problem(
                "mm.model",
                f"{key} must be a list of integers (one a pipeline stage), or a list of such "
                f"lists (one a virtual stage), got {layers!r}",
            )
        ]
    if any(len(row) != pp for row in rows):
        what = "each of its lists has" if virtual else "it has"
        counts = sorted({len(row) for row in rows})
        return [
            Problem(
                "mm.model",
                f"{key}: {what} {'/'.join(map(str, counts))} entries but pipeline_model_parallel_size is {pp}",
                "give one layer count per pipeline stage",
            )
        ]
    vpp = spec.gpt.extra.get("virtual_pipeline_model_parallel_size")
    if not virtual and _is_int(vpp) and vpp > 1:
        return [
            Problem(
                "mm.model",
                f"{key} gives no virtual stages but virtual_pipeline_model_parallel_size is {vpp}",
                f"give {vpp} lists of {pp} layer counts, one list per virtual stage",
            )
        ]
    if virtual:
        if vpp is None:
            return [
                Problem(
                    "mm.model",
                    f"{key} has {len(rows)} virtual stages but the job sets no virtual_pipeline_model_parallel_size",
                    f"set gpt.extra.virtual_pipeline_model_parallel_size: {len(rows)}",
                )
            ]
        if _is_int(vpp) and vpp != len(rows):
            return [
                Problem(
                    "mm.model",
                    f"{key} has {len(rows)} virtual stages but virtual_pipeline_model_parallel_size is {vpp}",
                    "give one list per virtual stage",
                )
            ]
    flat = [n for row in rows for n in row]
    if any(n < 0 for n in flat):
        return [Problem("mm.model", f"{key} {layers} has a negative layer count")]
    if not empty_stages and any(n == 0 for n in flat):
        return [
            Problem(
                "mm.model",
                f"{key} {layers} has a stage with no layers",
                f"every pipeline stage needs at least one {name} layer",
            )
        ]
    total = part.get("num_layers")
    if _is_int(total) and sum(flat) != total:
        return [Problem("mm.model", f"{key} {layers} sums to {sum(flat)}, not num_layers = {total}")]
    return []
