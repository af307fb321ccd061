"""The built-in trainer's checkpoints as the loop sees them: resuming from the last one (checked
against the job as on the login node: run/resume.py), and saving one on rank 0 (every rank learns
whether it worked; in the background with --async-save). Files and their atomicity are checkpoint.py's."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from hpc_mm.errors import UserError
from hpc_mm.run import resume
from hpc_mm.run.events import Kind
from hpc_mm.train import checkpoint
from hpc_mm.train.runtime import rng_state, set_rng_state


def log(message: str) -> None:
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    print(f"[rank {rank}] {message}", flush=True)


class Checkpointing:
    """The Trainer's checkpoint methods (it holds the model, optimizer, scheduler and position)."""

    def _resume(self) -> None:
        args = self.args
        began = time.monotonic()
        loaded = checkpoint.load_latest(args.load, repair=self.rank == 0)
        seconds = time.monotonic() - began
        if loaded is None:
            if self.rank == 0:
                log(f"no checkpoint in {args.load}: starting from scratch" if args.load else "starting from scratch")
            return
        iteration, state = loaded
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:  # a shape or a name that changed
            detail = " ".join(str(exc).split())[:300]
            raise UserError.one(
                "mm.model",
                f"the checkpoint at iteration {iteration} in {args.load} was saved for another model: {detail}",
                "resume with the model file it was saved with, or start a new run directory",
            ) from None
        if state.get("model_config") not in (None, self.model_config) and self.rank == 0:
            log(f"WARNING: {args.mm_model} changed since the checkpoint (the weights still fit); the job file wins")
        if not args.no_load_optim:
            errors, warnings = resume.for_trainer(args, iteration, state, self.gbs, self.dp_size)
            if errors:
                raise UserError(errors)
            for problem in warnings if self.rank == 0 else []:
                log(f"WARNING: {problem}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["opt_param_scheduler"])
        if not args.no_load_rng:
            states = state["rng_state"]
            set_rng_state(states[self.rank] if len(states) == self.world else states[0])
        self.iteration, self.consumed = iteration, state["consumed_samples"]
        if self.rank == 0:
            log(f"resumed from {args.load} at iteration {iteration} (consumed samples {self.consumed})")
            self._record(Kind.RESUMED, iteration=iteration, seconds=round(seconds, 3))  # the load's time
            if iteration >= args.train_iters:
                log(
                    f"nothing left to train: the checkpoint is at iteration {iteration} of train_iters "
                    f"{args.train_iters}"
                )

    # ------------------------------------------------------------------ checkpoint
    def save(self, reason: str) -> bool:
        """Save on rank 0; every rank learns whether it worked. A failed interval save is a warning
        (training goes on, the previous checkpoint stays the resume point, the next save tries
        again); a failed save on the exit signal or at the end is an error."""
        args = self.args
        if not args.save:
            return True
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, rng_state())  # each rank resumes its own RNG streams
        error: UserError | None = None
        if self.rank == 0:
            try:
                self._write(reason, gathered)
            except UserError as exc:
                error = exc
        failed = torch.tensor([1 if error else 0], dtype=torch.int32)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if not failed.item():
            return True
        if reason == "interval" and self.rank == 0:
            log(f"WARNING: {error}; training goes on and the next save tries again")
            return False
        if reason == "interval":
            return False
        raise error or UserError.one("checkpoint.dir", f"rank 0 could not save iteration {self.iteration}")

    def _write(self, reason: str, gathered: list) -> None:
        args = self.args
        state = {
            "iteration": self.iteration,
            "consumed_samples": self.consumed,
            "checkpoint_version": 3.0,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "opt_param_scheduler": self.scheduler.state_dict(),
            "rng_state": gathered,
            "model_config": self.model_config,
            "data_parallel_size": self.dp_size,
            "args": {k: v for k, v in vars(args).items()},
        }
        iteration = self.iteration

        def done(it: int, seconds: float, blocked: float | None = None) -> None:
            # blocked: what a background save cost training (the rest was written beside it)
            held = {} if blocked is None else {"blocked": round(blocked, 3)}
            self._record(Kind.CHECKPOINT, iteration=it, reason=reason, seconds=round(seconds, 3), **held)
            log(f"saved checkpoint from iteration {it:7d} to {args.save} [{reason}, {seconds:.2f} s]")

        if self.saver:
            try:
                self.saver.wait()  # a failed background save: this one may still succeed
            except UserError as exc:
                log(f"WARNING: {exc}")
        if self.saver and reason == "interval":
            self.saver.save(args.save, iteration, state, args.keep_last, on_done=done)
        else:
            done(iteration, checkpoint.save(args.save, iteration, state, args.keep_last))
