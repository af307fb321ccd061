"""What the job runs, and the contract hpc-mm keeps with it: one small module a kind.

    megatron   Megatron arguments (pretrain_vlm.py, pretrain_sora.py, pretrain_transformers.py with its
               --fsdp2-config-path file, pretrain_omni.py, posttrain_*.py, the built-in trainer)
    fsdp2      MindSpeed-MM's FSDP2 trainer, driven by one YAML file (mindspeed_mm/fsdp/train/trainer.py
               and its task trainers)
    command    any other script: inference, evaluation, feature extraction, data preparation

A contract says what the command line is, which files are copied into the run directory, what
hpc-mm owns of the entry's settings, how many iterations it trains and how often it saves, whether it
saves on a stop signal, and what it checks before anything queues. `contract(spec)` gives a job's.
"""

from __future__ import annotations

import re

from hpc_mm.job.entries.base import Contract
from hpc_mm.job.entries.command import CommandContract
from hpc_mm.job.entries.fsdp2 import Fsdp2Contract
from hpc_mm.job.entries.megatron import MegatronContract

CONTRACTS: dict[str, Contract] = {c.kind: c for c in (MegatronContract(), Fsdp2Contract(), CommandContract())}

# The FSDP2 trainer and its task trainers (mindspeed_mm/fsdp/tasks/funasr/trainer.py, .../cosyvoice3/train.py).
_FSDP2 = re.compile(r"(^|/)mindspeed_mm/fsdp/(train/trainer|tasks/[^/]+/(trainer|train))\.py$")
# Entries that run once and end: inference, evaluation, conversion, feature extraction, data preparation.
_COMMAND = re.compile(
    r"(^|/)(inference_[^/]*|evaluate_[^/]*|infer_[^/]*|[^/]*convert[^/]*|get_[^/]*_feature|"
    r"prepare_data|[^/]*preprocess[^/]*)\.py$"
)


def recognise(script: str, launcher: str = "torchrun", program: bool = False) -> str:
    """The kind of an entry from its script's path, its launcher and whether it is Python (entry.kind:
    auto): an `accelerate launch` script, a Ray driver or a program of its own is not driven by Megatron's
    arguments."""
    if launcher in ("accelerate", "ray") or program:
        return "command"
    if _FSDP2.search(script):
        return "fsdp2"
    if _COMMAND.search(script):
        return "command"
    return "megatron"


def contract(spec) -> Contract:
    entry = spec.entry
    return CONTRACTS[entry.kind if entry.kind != "auto" else recognise(entry.script, entry.launcher, entry.program)]


__all__ = ["CONTRACTS", "Contract", "contract", "recognise"]
