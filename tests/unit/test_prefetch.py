"""Checkpoint prefetch (launch/prefetch.py): a node reads the shards its ranks load, and only those."""

from __future__ import annotations

from pathlib import Path

from hpc_mm.launch import prefetch
from hpc_mm.launch.plan import resolve_plan
from tests.unit.test_plan import TINY, slurm


def folder_with(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "iter_0000010"
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "model_optim_rng.pt").write_bytes(b"x" * 1000)
    return folder


def test_a_node_reads_the_shards_of_its_own_ranks(tmp_path):
    # 8 ranks, TP 2, PP 2 (DP 2): node 1 of 2 holds ranks 4..7, all in pipeline stage 1
    names = [f"mp_rank_{t:02d}_{p:03d}" for t in range(2) for p in range(2)]
    folder = folder_with(tmp_path, names)
    got = prefetch.shards(folder, range(4, 8), 8, 2, 2)
    assert sorted(f.parent.name for f in got) == ["mp_rank_00_001", "mp_rank_01_001"]
    assert sorted(f.parent.name for f in prefetch.shards(folder, range(0, 2), 8, 2, 2)) == [
        "mp_rank_00_000",
        "mp_rank_01_000",
    ]


def test_another_layout_is_read_whole(tmp_path):
    folder = tmp_path / "checkpoint-40"
    folder.mkdir()
    for name in ("__0_0.distcp", "__1_0.distcp", ".metadata"):
        (folder / name).write_bytes(b"y" * 10)
    assert len(prefetch.shards(folder, range(0, 1), 2, 1, 1)) == 3


def test_a_start_prefetches_the_checkpoint_it_resumes(tmp_path):
    import torch

    from hpc_mm.train import checkpoint

    plan = resolve_plan(str(TINY), [], tmp_path / "run", env=slurm(0))
    assert prefetch.start(plan) is None  # nothing saved yet
    checkpoint.save(plan.checkpoint_dir, 10, {"w": torch.zeros(1000)})
    fetch = prefetch.start(plan)
    fetch.join(10)
    files = sorted(p for p in (Path(plan.checkpoint_dir) / "iter_0000010").rglob("*") if p.is_file())
    assert fetch.files == files and fetch.bytes == sum(p.stat().st_size for p in files) > 4000
