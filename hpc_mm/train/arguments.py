"""The built-in trainer's command line: Megatron's spelling of the seed's arguments.

The same argv `hpc-mm args` prints for MindSpeed-MM's pretrain_vlm.py, plus three options
of this trainer only (--run-dir, --keep-last, --async-save).
"""

from __future__ import annotations

import argparse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: hpc_mm.train: {message} (hint: python -m hpc_mm.train --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hpc_mm.train", allow_abbrev=False,
                description="hpc-mm's built-in trainer: a tiny vision-language model with MindSpeed-MM's "
                            "arguments, checkpoint layout and exit-signal contract; runs on CPU, GPU or NPU.")
    g = p.add_argument_group("GPT_ARGS")
    g.add_argument("--use-mcore-models", action="store_true")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--num-workers", type=int, default=1)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"])
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-wsd-decay-style", default="exponential", choices=["exponential", "linear", "cosine"])
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--eval-interval", type=int, default=None, help="accepted for compatibility; no evaluation")
    g.add_argument("--eval-iters", type=int, default=None, help="accepted for compatibility; no evaluation")
    m = p.add_argument_group("MM_ARGS")
    m.add_argument("--mm-data", required=True, help="mm-data JSON: dataset_param, dataloader_param")
    m.add_argument("--mm-model", required=True, help="mm-model JSON: image_encoder, text_decoder")
    m.add_argument("--mm-tool", default=None, help="tools JSON (read, profiling is not supported here)")
    o = p.add_argument_group("OUTPUT_ARGS")
    o.add_argument("--save", default=None)
    o.add_argument("--load", default=None)
    o.add_argument("--save-interval", type=int, default=None)
    o.add_argument("--no-load-optim", action="store_true")
    o.add_argument("--no-load-rng", action="store_true")
    o.add_argument("--override-opt_param-scheduler", dest="override_opt_param_scheduler", action="store_true",
                   help="on resume, a changed schedule takes the job's values")
    o.add_argument("--use-checkpoint-opt_param-scheduler", dest="use_checkpoint_opt_param_scheduler",
                   action="store_true", help="on resume, a changed schedule keeps the checkpoint's values")
    o.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM: finish the iteration, save a checkpoint on every rank's agreement, exit 0")
    o.add_argument("--exit-interval", type=int, default=None, help="save and exit after this many iterations")
    o.add_argument("--distributed-backend", default="gloo", choices=["nccl", "gloo", "hccl", "mpi"])
    o.add_argument("--distributed-timeout-minutes", type=int, default=10, help="collective timeout")
    h = p.add_argument_group("hpc-mm")
    h.add_argument("--run-dir", default=None, help="write events.jsonl and metrics.jsonl here")
    h.add_argument("--keep-last", type=int, default=None, help="keep only the newest N checkpoints")
    h.add_argument("--async-save", action="store_true", help="write checkpoints in a background thread")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
