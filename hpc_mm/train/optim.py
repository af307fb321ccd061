"""The built-in trainer's optimizer pieces: Megatron's parameter groups, and Megatron's
learning-rate and weight-decay scheduler (megatron.core.optimizer_param_scheduler), written
out here so that the trainer starts without importing megatron (seconds per restart). The
test suite checks it against megatron-core's own at every decay style.

It counts in samples, as Megatron's training loop does, and resumes with Megatron's rule for a
schedule that changed since the checkpoint (checked by run/resume.py, as on the login node):
refused, unless `--override-opt_param-scheduler` (the job's values win) or
`--use-checkpoint-opt_param-scheduler` (the checkpoint's win).
"""

from __future__ import annotations

import math

import torch

from hpc_mm.errors import UserError


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Megatron's grouping: no weight decay on biases and norms (wd_mult 0)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]


class Scheduler:
    """Megatron's OptimizerParamScheduler, same arithmetic, same state_dict."""

    def __init__(
        self,
        optimizer,
        init_lr: float,
        max_lr: float,
        min_lr: float,
        lr_warmup_steps: int,
        lr_decay_steps: int,
        lr_decay_style: str,
        start_wd: float,
        end_wd: float,
        wd_incr_steps: int,
        wd_incr_style: str,
        wsd_decay_steps: int | None = None,
        lr_wsd_decay_style: str | None = None,
        override: bool = False,
        use_checkpoint: bool = False,
    ):
        if override and use_checkpoint:
            raise UserError.one(
                "gpt.extra.override_opt_param_scheduler",
                "and use_checkpoint_opt_param_scheduler are both set",
                "choose one",
            )
        self.optimizer = optimizer
        self.init_lr, self.max_lr, self.min_lr = init_lr, float(max_lr), min_lr
        self.lr_warmup_steps, self.lr_decay_steps, self.lr_decay_style = lr_warmup_steps, lr_decay_steps, lr_decay_style
        self.wsd_decay_steps, self.lr_wsd_decay_style = wsd_decay_steps, lr_wsd_decay_style
        self.start_wd, self.end_wd, self.wd_incr_steps, self.wd_incr_style = (
            start_wd,
            end_wd,
            wd_incr_steps,
            wd_incr_style,
        )
        self.override, self.use_checkpoint = override, use_checkpoint
        self.num_steps = 0
        self.step(0)

    def get_wd(self) -> float:
        if self.num_steps > self.wd_incr_steps or self.wd_incr_style == "constant":
            return self.end_wd
        ratio = float(self.num_steps) / float(self.wd_incr_steps)
        coeff = ratio if self.wd_incr_style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    def get_lr(self) -> float:
        max_lr, min_lr = self.max_lr, self.min_lr
        if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
            return self.init_lr + ((max_lr - self.init_lr) * float(self.num_steps) / float(self.lr_warmup_steps))
        if self.lr_decay_style == "constant":
            return max_lr
        if self.num_steps > self.lr_decay_steps:
            return min_lr
        if self.lr_decay_style == "inverse-square-root":
            lr = max_lr * max(self.lr_warmup_steps, 1) ** 0.5 / (max(self.num_steps, 1) ** 0.5)
            return max(min_lr, lr)
        decay_ratio = float(self.num_steps - self.lr_warmup_steps) / float(self.lr_decay_steps - self.lr_warmup_steps)
        if self.lr_decay_style == "linear":
            coeff = 1.0 - decay_ratio
        elif self.lr_decay_style == "cosine":
            coeff = 0.5 * (math.cos(math.pi * decay_ratio) + 1.0)
        else:  # WSD
            anneal_start = self.lr_decay_steps - self.wsd_decay_steps
            if self.num_steps <= anneal_start:
                coeff = 1.0
            else:
                ratio = float(self.num_steps - anneal_start) / float(self.wsd_decay_steps)
                coeff = {
                    "linear": lambda: 1.0 - ratio,
                    "cosine": lambda: 0.5 * (math.cos(math.pi * ratio) + 1.0),
                    "exponential": lambda: (2.0 * math.pow(0.5, ratio)) - 1.0,
                    "minus_sqrt": lambda: 1.0 - math.sqrt(ratio),
                }[self.lr_wsd_decay_style]()
        return min_lr + coeff * (max_lr - min_lr)

    def step(self, increment: int) -> None:
        self.num_steps += increment
        lr, wd = self.get_lr(), self.get_wd()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)

    def state_dict(self) -> dict:
        return {
            "max_lr": self.max_lr,
            "lr_warmup_steps": self.lr_warmup_steps,
            "num_steps": self.num_steps,
            "lr_decay_style": self.lr_decay_style,
            "lr_decay_steps": self.lr_decay_steps,
            "min_lr": self.min_lr,
            "start_wd": self.start_wd,
            "end_wd": self.end_wd,
            "wd_incr_style": self.wd_incr_style,
            "wd_incr_steps": self.wd_incr_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at the checkpoint's step, with the checkpoint's schedule unless the job's wins
        (the trainer checked the change first: run/resume.py)."""
        if not self.override:
            for key in ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style"):
                setattr(self, key, state[key])
        self.step(increment=state["num_steps"])
        if not self.override:
            for key in ("start_wd", "end_wd", "wd_incr_steps", "wd_incr_style"):
                setattr(self, key, state[key])


def build_scheduler(optimizer, args, global_batch_size: int) -> Scheduler:
    """The scheduler counted in samples, as Megatron's training loop counts it."""
    decay_iters = args.lr_decay_iters or args.train_iters
    wsd = args.lr_wsd_decay_iters * global_batch_size if args.lr_wsd_decay_iters else None
    return Scheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters * global_batch_size,
        lr_decay_steps=decay_iters * global_batch_size,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * global_batch_size,
        wd_incr_style="constant",
        wsd_decay_steps=wsd,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
        override=args.override_opt_param_scheduler,
        use_checkpoint=args.use_checkpoint_opt_param_scheduler,
    )
