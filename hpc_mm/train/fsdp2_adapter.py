"""hpc-mm's save-on-signal adapter for MindSpeed-MM's FSDP2 trainer (26.0.0 and 26.1.0).

The trainer has no stop-signal handling: it saves every `training.save_interval` iterations and at
the end, so a preemption loses what it trained since its last save. This adapter runs the trainer
unchanged (no file of MindSpeed-MM is edited) with one thing added through its public classes:

- SIGTERM (what Slurm, torchrun and hpc-mm send to stop the ranks) only sets a flag;
- after each `TrainEngine.train_step`, the ranks agree on the flag (one all-reduce of one number);
  once any rank has it, `training.train_iters` becomes the current iteration + 1, so the trainer's
  own loop ends after this iteration and its own final save writes the checkpoint (DCP, tracker);
- the trainer then returns normally and the process exits 0.

It was written against TrainEngine.train of 26.0.0 and 26.1.0 (the loop `while self.iteration <
args.training.train_iters` and the final `if args.training.save:` save after it); on a trainer
whose loop differs it refuses to start, with one line, rather than change what it does not know.

    python fsdp2_adapter.py mindspeed_mm/fsdp/train/trainer.py CONFIG.yaml [key=value ...]

It runs in the entry's interpreter, which need not have hpc-mm: it imports only the standard
library, torch and the trainer's own modules.
"""

import inspect
import os
import runpy
import signal
import sys

RELEASES = ("26.0.0", "26.1.0")
# What the adapter relies on in TrainEngine.train: the loop's bound and the save after the loop.
FINGERPRINT = ("while self.iteration < args.training.train_iters", "if args.training.save:", "self.train_step(")
ENGINE = "mindspeed_mm.fsdp.train.train_engine"

_stop = {"requested": False}


def _refuse(message: str) -> None:
    print(f"error: entry.save_on_signal: {message}", flush=True)
    sys.exit(2)


def _checkout_root(script: str) -> str | None:
    """The MindSpeed-MM checkout a trainer script is in (the folder that holds mindspeed_mm/)."""
    parts = os.path.abspath(script).split(os.sep)
    if "mindspeed_mm" not in parts:
        return None
    return os.sep.join(parts[: len(parts) - 1 - parts[::-1].index("mindspeed_mm")]) or os.sep


def _engine_class(script: str):
    try:
        module = __import__(ENGINE, fromlist=["TrainEngine"])
    except ImportError:
        root = _checkout_root(script)
        if root is None:
            raise
        sys.path.insert(1, root)
        module = __import__(ENGINE, fromlist=["TrainEngine"])
    engine = getattr(module, "TrainEngine", None)
    if engine is None or not callable(getattr(engine, "train_step", None)):
        _refuse(f"{ENGINE}.TrainEngine.train_step not found: the adapter supports MindSpeed-MM {RELEASES}")
    try:
        source = inspect.getsource(engine.train)
    except (OSError, TypeError):
        source = ""
    missing = [line for line in FINGERPRINT if line not in source]
    if missing:
        _refuse(
            f"TrainEngine.train is not the loop the adapter was written for (MindSpeed-MM {', '.join(RELEASES)}): "
            f"no {missing[0]!r}; set entry.save_on_signal: false (a stop then loses the work since the last save)"
        )
    return engine


def _agreed() -> bool:
    """Does any rank have the stop flag? Every rank calls this once per step."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return _stop["requested"]
    if dist.get_backend() == "gloo":
        device = torch.device("cpu")
    else:
        accelerator = torch.accelerator.current_accelerator()
        device = torch.device(accelerator.type, torch.accelerator.current_device_index())
    flag = torch.tensor([1 if _stop["requested"] else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def install(engine) -> None:
    original = engine.train_step
    if getattr(original, "_hpc_mm_adapter", False):
        return
    base_init_subclass = engine.__dict__.get("__init_subclass__")

    @classmethod
    def refuse_overrides(cls, **kwargs):
        """A task's own engine (FunASR's) that replaces what is hooked here: refused when it is defined,
        before anything trains, rather than a stop that neither saves nor ends the ranks."""
        if base_init_subclass is not None:
            base_init_subclass.__func__(cls, **kwargs)
        else:
            super(engine, cls).__init_subclass__(**kwargs)
        overridden = [name for name in ("train", "train_step") if name in cls.__dict__]
        if overridden:
            _refuse(
                f"{cls.__module__}.{cls.__name__} overrides TrainEngine.{', '.join(overridden)}, which the adapter "
                "hooks; set entry.save_on_signal: false (a stop then loses the work since the last save)"
            )

    engine.__init_subclass__ = refuse_overrides

    def train_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if _agreed() and self.args.training.train_iters > self.iteration + 1:
            self.args.training.train_iters = self.iteration + 1  # this iteration is the last
            if not self.args.training.save:
                return out
            rank = int(os.environ.get("RANK", "0"))
            if rank == 0:
                print(
                    f"hpc-mm adapter: stop signal: saving after iteration {self.iteration + 1} and exiting",
                    flush=True,
                )
        return out

    train_step._hpc_mm_adapter = True
    engine.train_step = train_step


def main(argv: list[str]) -> None:
    if not argv:
        _refuse("usage: fsdp2_adapter.py TRAINER.py CONFIG.yaml [key=value ...]")
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python TRAINER.py` has it
    signal.signal(signal.SIGTERM, lambda *_: _stop.update(requested=True))
    install(_engine_class(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
