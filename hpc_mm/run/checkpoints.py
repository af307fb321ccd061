"""The checkpoint folder as a reader sees it, without torch: Megatron's layout and its tracker.

    <dir>/latest_checkpointed_iteration.txt          the commit marker, written last
    <dir>/iter_0000100/mp_rank_00/model_optim_rng.pt

`status`, `finish` (the requeue decision) and the launcher read it on nodes and login nodes
where torch may be absent; the built-in trainer's writer is `hpc_mm.train.checkpoint`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
FILENAME = "model_optim_rng.pt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


def iter_dir(save_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(save_dir) / f"iter_{iteration:07d}"


def checkpoint_file(save_dir: str | os.PathLike, iteration: int, mp_rank: int = 0) -> Path:
    return iter_dir(save_dir, iteration) / f"mp_rank_{mp_rank:02d}" / FILENAME


def latest_iteration(save_dir: str | os.PathLike) -> int | None:
    """The committed iteration according to the tracker, or None."""
    try:
        text = (Path(save_dir) / TRACKER).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def saved_iterations(save_dir: str | os.PathLike) -> list[int]:
    path = Path(save_dir)
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := _ITER_DIR.match(p.name)) and p.is_dir())
