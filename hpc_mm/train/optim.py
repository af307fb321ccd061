"""The built-in trainer's optimizer pieces: Megatron's parameter groups and its learning-rate
scheduler, counted in samples as Megatron's training loop counts them.
"""

from __future__ import annotations

import warnings

import torch


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Megatron's grouping: no weight decay on biases and norms (wd_mult 0)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]


def build_scheduler(optimizer, args, global_batch_size: int):
    """megatron-core's scheduler, counted in samples as Megatron's training loop counts it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    decay_iters = args.lr_decay_iters or args.train_iters
    wsd = args.lr_wsd_decay_iters * global_batch_size if args.lr_wsd_decay_iters else None
    return OptimizerParamScheduler(
        optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters * global_batch_size, lr_decay_steps=decay_iters * global_batch_size,
        lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay, end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * global_batch_size, wd_incr_style="constant",
        wsd_decay_steps=wsd, lr_wsd_decay_style=args.lr_wsd_decay_style)
