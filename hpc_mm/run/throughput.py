"""Tokens per second and model FLOPs utilisation, from the entry's own log lines.

Tokens/s = samples/s (the iteration line's global batch size / its step time) x tokens a sample
(`throughput.seq_length`; else Megatron's --seq-length in gpt.extra; for the built-in trainer its
image patches + BOS + caption). Per device: divided by the world size the run started with.

MFU = model FLOPs per second / (devices x `throughput.peak_tflops`), with the model's FLOPs per
sample from Megatron's formula for a GPT decoder (megatron/training/training.py,
num_floating_point_operations: forward and backward, 3 x 2 x 2 = 12 per multiply-add of each weight
matrix, attention scores and values, the logits), for the text decoder whose sizes the job names:
gpt.extra (num_layers, hidden_size, ...) or the mm-model JSON's `text_decoder`. The vision encoder is
left out (as MindSpeed-MM's own TFLOPs figure does for the LLM part); MFU is None where the
model's size or the device's peak is not known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.job.spec import BUILTIN_TRAINER, JobSpec
from hpc_mm.run.records import Metric


@dataclass(frozen=True)
class Decoder:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    gated: bool = False  # swiglu: three matrices in the MLP instead of two

    def flops_per_sample(self, seq_length: int) -> float:
        s, h, n = seq_length, self.hidden_size, self.num_layers
        attention = 1 + self.num_query_groups / self.num_attention_heads + s / h
        mlp = (self.ffn_hidden_size / h) * (1.5 if self.gated else 1.0)
        logits = self.vocab_size / (2 * n * h)
        return 12 * s * n * h * h * (attention + mlp + logits)


@dataclass(frozen=True)
class Rates:
    tokens_per_second: float | None
    tokens_per_second_per_device: float | None
    mfu: float | None  # 0..1


def _json(path: str | None) -> dict:
    try:
        value = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def seq_length(spec: JobSpec) -> int | None:
    if spec.throughput.seq_length:
        return spec.throughput.seq_length
    given = spec.gpt.extra.get("seq_length")
    if isinstance(given, int) and given > 0:
        return given
    if spec.entry.script == BUILTIN_TRAINER:  # image patches, BOS, then the caption
        try:
            data = _json(spec.mm.data)["dataset_param"]
            vit = _json(spec.mm.model)["image_encoder"]["vision_encoder"]
            return (data["image_size"] // vit["patch_size"]) ** 2 + 1 + data["caption_length"]
        except (KeyError, TypeError, ZeroDivisionError):  # not the shape the built-in trainer reads
            return None
    return None


def decoder(spec: JobSpec) -> Decoder | None:
    """The text decoder's sizes: gpt.extra's Megatron arguments, else the mm-model JSON's text_decoder."""
    for source in (spec.gpt.extra, _json(spec.mm.model).get("text_decoder")):
        if not isinstance(source, dict):
            continue
        try:
            heads = int(source["num_attention_heads"])
            hidden = int(source["hidden_size"])
            return Decoder(
                num_layers=int(source["num_layers"]),
                hidden_size=hidden,
                ffn_hidden_size=int(source.get("ffn_hidden_size") or 4 * hidden),
                num_attention_heads=heads,
                num_query_groups=int(source.get("num_query_groups") or heads)
                if source.get("group_query_attention", True)
                else heads,
                vocab_size=int(source.get("padded_vocab_size") or source.get("vocab_size")),
                gated=bool(source.get("swiglu", False)),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return None


def rates(spec: JobSpec, rows: list[Metric], world_size: int | None, last: int = 10) -> Rates:
    """Over the last `last` logged iterations that say their samples/s."""
    recent = [r.samples_per_second for r in rows if r.samples_per_second][-last:]
    tokens = seq_length(spec)
    if not recent or not tokens:
        return Rates(None, None, None)
    samples = sum(recent) / len(recent)
    per_second = samples * tokens
    per_device = per_second / world_size if world_size else None
    model = decoder(spec)
    peak = spec.throughput.peak_tflops
    mfu = None
    if model and peak and world_size:
        mfu = samples * model.flops_per_sample(tokens) / (world_size * peak * 1e12)
    return Rates(per_second, per_device, mfu)


def of_run(run, rows: list[Metric] | None = None) -> Rates:
    """A run directory's rates, with the world size its newest start began with."""
    from hpc_mm.errors import UserError

    try:
        spec = run.job
    except UserError:
        return Rates(None, None, None)
    began = next((s.started for s in reversed(run.starts()) if s.started is not None), None)
    return rates(spec, run.metrics() if rows is None else rows, began.get("world_size") if began else None)
