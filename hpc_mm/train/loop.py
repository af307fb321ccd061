"""The training loop: Megatron's contract on a model small enough for a CPU.

- data parallel over every rank (TP/PP/CP > 1 are refused);
- micro-batches accumulated up to the global batch across DP ranks, gradients all-reduced
  once per step through one contiguous buffer in parameter order (as Megatron's DDP does),
  so the reduction order, and thus every bit of the result, never depends on timing;
- AdamW with the seed's betas/eps/weight decay, gradient clipping, and Megatron's
  learning-rate scheduler (optim.py) stepped in samples, as Megatron does;
- Megatron-format log lines, metrics.jsonl and events.jsonl in the run directory;
- checkpoints every --save-interval, on the exit signal and at the end, holding everything
  needed for an exact resume (model, optimizer, scheduler, data position, every RNG);
- --exit-signal-handler: on SIGTERM every rank finishes the iteration, all agree, save, exit 0.
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import math
import os
import random
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hpc_mm.errors import UserError, print_problems
from hpc_mm.job.signals import STACK_SIGNAL
from hpc_mm.run.events import Kind
from hpc_mm.run.layout import RANK_TIMES
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir
from hpc_mm.train import checkpoint
from hpc_mm.train.cpuwait import CpuWait, OwnTime
from hpc_mm.train.data import PretrainingBatchSampler, SyntheticCaptionDataset
from hpc_mm.train.model import TinyVLM
from hpc_mm.train.optim import build_scheduler, param_groups
from hpc_mm.train.runtime import (
    ExitSignal,
    allreduce_gradients,
    bind_device,
    ignore_stop_signals,
)
from hpc_mm.train.saving import Checkpointing, log


def _read_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError.one(what, f"cannot read {path}: {exc}") from None


class Trainer(Checkpointing):
    def __init__(self, args):
        self.args = args
        if max(args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size) > 1:
            raise UserError.one(
                "gpt.tensor_model_parallel_size",
                "the built-in trainer's model is data-parallel only (TP, PP and CP must be 1)",
                "use a MindSpeed-MM entry (e.g. pretrain_vlm.py) for model parallelism",
            )
        self.model_config = _read_json(args.mm_model, "--mm-model")
        self.data_config = _read_json(args.mm_data, "--mm-data")
        if args.mm_tool and Path(args.mm_tool).exists():
            _read_json(args.mm_tool, "--mm-tool")
        self.run = RunDir(args.run_dir) if args.run_dir else None
        self.device, backend = bind_device(args.distributed_backend)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=args.distributed_timeout_minutes))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # Data parallel only (TP, PP and CP are 1): the data-parallel group is every rank.
        self.dp_group = dist.group.WORLD
        self.dp_rank, self.dp_size = self.rank, self.world
        mbs, dp = args.micro_batch_size, self.dp_size
        self.gbs = args.global_batch_size or mbs * dp
        if self.gbs % (mbs * dp):
            raise UserError.one(
                "gpt.global_batch_size",
                f"{self.gbs} is not a multiple of micro_batch_size x DP = {mbs} x {dp}",
                "fix the job file (hpc-mm validate checks this)",
            )
        self.grad_acc = self.gbs // (mbs * dp)
        self.exit_signal = ExitSignal(args.exit_signal_handler)
        self.saver = checkpoint.AsyncSaver() if args.async_save else None
        # each rank's compute time per step, for the launcher's straggler detection (run/stragglers.py)
        self.timed = self.world > 1 and os.environ.get(RANK_TIMES) == "1"
        self.rank_seconds: tuple[tuple[float, ...], ...] | None = None  # a few steps', rank by rank
        self._times: list[float] = []
        self.own = OwnTime(CpuWait() if self.timed else None)  # (nothing timed where nobody reads it)

    # ------------------------------------------------------------------ setup
    def build(self) -> None:
        args = self.args
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        try:
            self.model = TinyVLM(self.model_config).to(self.device)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError.one(
                "mm.model",
                f"the built-in trainer cannot build its model from {args.mm_model}: {exc.__class__.__name__}: {exc}",
                "see jobs/tiny-vlm/model.json for the keys it reads",
            ) from None
        self.params = list(self.model.parameters())
        for p in self.params:  # every DP rank starts from rank 0's weights
            dist.broadcast(p.data, src=dist.get_global_rank(self.dp_group, 0), group=self.dp_group)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model),
            lr=args.lr,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_eps,
            weight_decay=args.weight_decay,
        )
        self.scheduler = build_scheduler(self.optimizer, args, self.gbs)
        self.iteration, self.consumed = 0, 0
        self._resume()
        dp = self.data_config["dataset_param"]
        vocab = self.model_config["text_decoder"]["vocab_size"]
        in_channels = self.model_config["image_encoder"]["vision_encoder"].get("in_channels", 3)
        try:
            self.dataset = SyntheticCaptionDataset(vocab_size=vocab, in_channels=in_channels, **dp)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError.one(
                "mm.data",
                f"the built-in trainer cannot build its dataset from {args.mm_data}: {exc.__class__.__name__}: {exc}",
                "see jobs/tiny-vlm/data.json for the dataset_param keys it reads",
            ) from None
        loader = self.data_config.get("dataloader_param", {})
        sampler = PretrainingBatchSampler(
            len(self.dataset),
            self.consumed,
            args.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            bool(loader.get("shuffle", True)),
            args.seed,
        )
        # An explicit generator keeps the loader from drawing on the global RNG, which is
        # checkpointed: a resumed run must see the same global RNG stream as an unbroken one.
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=args.num_workers,
            pin_memory=bool(loader.get("pin_memory", False)),
            generator=torch.Generator(),
            worker_init_fn=ignore_stop_signals,
            persistent_workers=args.num_workers > 0,
        )

    # ------------------------------------------------------------------ loop
    def _record(self, kind: Kind, **data) -> None:
        if self.run is not None:
            self.run.record(kind, **data)

    def train(self) -> int:
        args = self.args
        log(
            f"data-parallel rank {self.dp_rank}/{self.dp_size} on {socket.gethostname()} ({self.device}): "
            f"iteration {self.iteration}, {self.consumed} samples consumed"
        )
        data = iter(self.loader)
        last_saved = self.iteration
        tick = time.monotonic()
        while self.iteration < args.train_iters:
            loss, grad_norm = self._step(data)
            self.iteration += 1
            self.consumed += self.gbs
            self.scheduler.step(increment=self.gbs)
            lr = self.optimizer.param_groups[0]["lr"]
            elapsed, tick = time.monotonic() - tick, time.monotonic()
            if self.run is not None and self.rank == 0:
                self.run.write_metric(
                    Metric(
                        iteration=self.iteration,
                        loss=loss,
                        lr=lr,
                        grad_norm=grad_norm,
                        consumed_samples=self.consumed,
                        samples_per_second=self.gbs / elapsed,
                        time=round(time.time(), 3),
                        rank_seconds=self.rank_seconds,
                    )
                )
            if self.rank == 0 and self.iteration % args.log_interval == 0:
                log(
                    f" iteration {self.iteration:8d}/{args.train_iters:8d} | consumed samples: {self.consumed:12d} | "
                    f"elapsed time per iteration (ms): {elapsed * 1000:.1f} | learning rate: {lr:.6E} | "
                    f"global batch size: {self.gbs:5d} | lm loss: {loss:.6E} | loss scale: 1.0 | "
                    f"grad norm: {grad_norm:.3f} | number of skipped iterations:   0 | number of nan iterations:   0 |"
                )
            if args.save_interval and self.iteration % args.save_interval == 0:
                if self.save("interval"):
                    last_saved = self.iteration
            if args.exit_signal_handler and self.exit_signal.agreed():
                if last_saved != self.iteration:
                    self.save("signal")
                elif self.saver:
                    self.saver.wait()
                log(f"exiting on signal after iteration {self.iteration}")
                return 0
            if args.exit_interval and self.iteration % args.exit_interval == 0:
                break
        if last_saved != self.iteration:
            self.save("final")
        if self.saver:
            self.saver.wait()
        return 0

    def _step(self, data) -> tuple[float, float]:
        """One step. Timed for the straggler detection: its forward and backward passes, less its waits
        for other processes' turns on a CPU (not its waits for data, nor for the other ranks)."""
        args, own = self.args, self.own
        own.reset()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for _ in range(self.grad_acc):
            images, captions = next(data)
            own.begin()
            loss = self.model(images.to(self.device), captions.to(self.device)) / self.grad_acc
            loss.backward()
            total += loss.detach()
            own.end()
        allreduce_gradients(self.params, self.dp_group, self.dp_size)
        if args.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, args.clip_grad)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params]))
        if self.saver:
            self.saver.before_update()  # a background save's copy of the weights is done with them
        self.optimizer.step()
        dist.all_reduce(total, group=self.dp_group)
        if self.timed:
            # A rank that shared its CPU with another process for much of the step is slowed beyond the
            # wait itself (the switches, its caches refilled): that step says nothing of the rank.
            self._share_times(own.seconds if own.delayed <= CONTENDED * own.seconds else float("nan"))
        return total.item() / self.dp_size, float(grad_norm)

    def _share_times(self, computed: float) -> None:
        """Every rank's compute times of the last TIMES_EVERY steps, gathered in one all-reduce (a
        collective of more than one value costs gloo several hundred microseconds: once per step, that
        would be percents of a small step) and written by rank 0 with the row of the last of them."""
        self._times.append(computed)
        self.rank_seconds = None
        if len(self._times) < TIMES_EVERY:
            return
        self.own.refresh()  # a quota set, or the rank moved to another cgroup, while it trains
        said = torch.zeros(self.world, TIMES_EVERY, device=self.device)
        said[self.rank] = torch.tensor([-1.0 if math.isnan(t) else t for t in self._times])
        dist.all_reduce(said, group=self.dp_group)
        self.rank_seconds = tuple(tuple(None if v < 0 else round(v, 6) for v in step) for step in said.t().tolist())
        self._times = []

    def close(self) -> None:
        if self.saver:
            self.saver.wait()
        if dist.is_initialized():
            dist.destroy_process_group()


TIMES_EVERY = 10  # steps whose compute times the ranks share at once
CONTENDED = 0.6  # a step that waited for a CPU longer than this share of its compute is not measured


def main(argv: list[str] | None = None) -> int:
    from hpc_mm.train.arguments import parse_args

    args = parse_args(argv)
    faulthandler.register(STACK_SIGNAL, all_threads=True)  # the launcher's watchdog asks for stacks on a hang
    trainer = None
    try:
        trainer = Trainer(args)
        trainer.build()
        return trainer.train()
    except UserError as exc:
        return print_problems(exc)
    finally:
        if trainer is not None:
            trainer.close()
        elif dist.is_initialized():
            dist.destroy_process_group()
