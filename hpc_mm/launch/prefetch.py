"""Checkpoint prefetch: while a start's interpreters come up, each node reads the files its ranks
will load into the page cache, so that the load itself runs at memory speed.

Which files: the newest whole checkpoint the start resumes from (Megatron's `iter_N` folder, or the
entry's own `resume:` folder); in Megatron's layout, only the model-parallel shards of this node's
ranks (`mp_rank_TT[_PPP]`, ranks ordered tensor-, context-, data-, then pipeline-parallel); in a DCP
or any other layout, every file of the folder (each rank may read from any shard). Read in large
blocks by a few threads and dropped at once: nothing is kept in this process. It never delays or
fails a start: it runs beside it, and stops at the first error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

BLOCK = 16 << 20
READERS = 4  # files read at once (a parallel filesystem serves several streams faster than one)


def shards(folder: Path, ranks: range, world: int, tp: int, pp: int) -> list[Path]:
    """The files under a checkpoint folder that `ranks` load."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files or not any(p.parent.name.startswith("mp_rank_") for p in files):
        return files
    per_stage = max(1, world // max(1, pp))
    wanted = set()
    for rank in ranks:
        t, p = rank % max(1, tp), rank // per_stage
        wanted.add(f"mp_rank_{t:02d}" if pp <= 1 else f"mp_rank_{t:02d}_{p:03d}")
    mine = [f for f in files if f.parent.name in wanted or not f.parent.name.startswith("mp_rank_")]
    return mine if any(f.parent.name in wanted for f in mine) else files


class Prefetch(threading.Thread):
    def __init__(self, files: list[Path]):
        super().__init__(name="checkpoint-prefetch", daemon=True)
        self.files, self.bytes, self.seconds = files, 0, None
        self._lock = threading.Lock()

    def run(self) -> None:
        began = time.monotonic()
        todo = list(self.files)
        readers = [threading.Thread(target=self._read, args=(todo,), daemon=True) for _ in range(READERS)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        self.seconds = time.monotonic() - began
        if self.bytes:
            print(
                f"hpc-mm launch: prefetched {self.bytes / 2**20:.0f} MiB of checkpoint in {self.seconds:.2f} s",
                file=sys.stderr,
                flush=True,
            )

    def _read(self, todo: list[Path]) -> None:
        buffer = bytearray(BLOCK)
        while True:
            with self._lock:
                if not todo:
                    return
                path = todo.pop(0)
            try:
                with open(path, "rb", buffering=0) as f:
                    try:
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    except (AttributeError, OSError):
                        pass
                    while (n := f.readinto(buffer)) > 0:
                        with self._lock:
                            self.bytes += n
            except OSError:
                return


def start(plan) -> Prefetch | None:
    """Begin reading what this node's ranks of this start will load; None when there is nothing."""
    from hpc_mm.launch.command import start_paths
    from hpc_mm.run.checkpoints import iter_dir, latest_whole

    spec = plan.spec
    paths = start_paths(plan)
    if spec.resume.dir:
        folder = Path(plan.checkpoint_dir) / paths.latest_name if paths.latest_name else None
    else:
        latest = latest_whole(plan.checkpoint_dir)
        folder = iter_dir(plan.checkpoint_dir, latest) if latest is not None else None
    if folder is None or not folder.is_dir():
        return None
    first = plan.node_rank * plan.nproc_per_node if plan.mode == "agent" else (plan.rank or 0)
    count = plan.nproc_per_node if plan.mode == "agent" else 1
    ranks = range(first, first + count)
    tp, pp = spec.gpt.tensor_model_parallel_size, spec.gpt.pipeline_model_parallel_size
    files = shards(folder, ranks, plan.world_size, tp, pp)
    if not files:
        return None
    fetch = Prefetch(files)
    fetch.start()
    return fetch
