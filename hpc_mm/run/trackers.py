"""What experiment trackers need to see every start of a run (requeued, restarted inside, resumed with
--run-dir) as one run: the run's name and a stable id, through their own environment variables.

    WANDB_RUN_ID, WANDB_RESUME=allow, WANDB_NAME   Weights & Biases (wandb.init reads them; Megatron's
                                                  --wandb-project then continues one run)
    HPC_MM_RUN_ID, HPC_MM_RUN_NAME                for any other tracker or script of the user's

A variable the job or the environment already sets is left as it is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def run_id(run_dir: str | Path, created: float | None) -> str:
    """The run's id: its name, made safe, and a hash of where and when it was made (W&B: [A-Za-z0-9_-])."""
    path = Path(run_dir).resolve()
    digest = hashlib.sha256(f"{path}:{created or 0}".encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', path.name)[:48]}-{digest}"


def env(run_dir: str | Path, created: float | None) -> dict[str, str]:
    ident, name = run_id(run_dir, created), Path(run_dir).resolve().name
    return {
        "HPC_MM_RUN_ID": ident,
        "HPC_MM_RUN_NAME": name,
        "WANDB_RUN_ID": ident,
        "WANDB_RESUME": "allow",
        "WANDB_NAME": name,
    }
