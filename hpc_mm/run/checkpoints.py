"""The checkpoint folder as a reader sees it, without torch: Megatron's layout, its tracker,
and a manifest that says cheaply whether a checkpoint is whole.

    <dir>/latest_checkpointed_iteration.txt          the commit marker, written last
    <dir>/iter_0000100/mp_rank_00/model_optim_rng.pt
    <dir>/iter_0000100/manifest.json                 size and CRC-32 of every file (hpc-mm's writer)

`status`, `finish` (the requeue decision) and the launcher read it on nodes and login nodes
where torch may be absent; the built-in trainer's writer is `hpc_mm.train.checkpoint`.
Checkpoints written by Megatron itself have no manifest: they count as whole when every
model file is there and not empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.run.atomic import write_atomic
from hpc_mm.run.durable import DurableWriter, crc32_of

TRACKER = "latest_checkpointed_iteration.txt"
FILENAME = "model_optim_rng.pt"
MANIFEST = "manifest.json"
DCP_METADATA = ".metadata"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


def iter_dir(save_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(save_dir) / f"iter_{iteration:07d}"


def checkpoint_file(save_dir: str | os.PathLike, iteration: int, mp_rank: int = 0) -> Path:
    return iter_dir(save_dir, iteration) / f"mp_rank_{mp_rank:02d}" / FILENAME


def latest_iteration(save_dir: str | os.PathLike) -> int | None:
    """The committed iteration according to the tracker, or None (absent or unreadable)."""
    try:
        text = (Path(save_dir) / TRACKER).read_text(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def saved_iterations(save_dir: str | os.PathLike) -> list[int]:
    path = Path(save_dir)
    try:
        return sorted(int(m.group(1)) for p in path.iterdir() if (m := _ITER_DIR.match(p.name)) and p.is_dir())
    except OSError:
        return []


def write_tracker(save_dir: Path, iteration: int) -> None:
    """Commit `iteration`: a temporary file, fsync, rename over the tracker, fsync the folder."""
    write_atomic(Path(save_dir) / TRACKER, str(iteration), durable=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, written: dict[str, DurableWriter] | None = None) -> None:
    """Size and CRC-32 of every file of a checkpoint folder, written (and fsynced) into it;
    files in `written` (by path relative to `folder`) were checksummed while written."""
    written = written or {}

    def entry(path: Path) -> dict:
        name = str(path.relative_to(folder))
        writer = written.get(name)
        if writer is not None and writer.size == path.stat().st_size:
            return {"size": writer.size, "crc32": writer.checksum}
        return {"size": path.stat().st_size, "crc32": crc32_of(path)}

    files = {
        str(p.relative_to(folder)): entry(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    with open(folder / MANIFEST, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())


def _matches(path: Path, info: dict) -> bool:
    """The file against its manifest entry: CRC-32 (this writer), or sha256 (manifests of hpc-mm 0.1)."""
    if "crc32" in info:
        return crc32_of(path) == info["crc32"]
    return "sha256" in info and sha256(path) == info["sha256"]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str = ""


def verify(save_dir: str | os.PathLike, iteration: int, deep: bool = False) -> Verdict:
    """Is checkpoint `iteration` whole? Sizes against the manifest (cheap), and with `deep` the
    hashes too; without a manifest (Megatron's own writer), every model file present and not empty."""
    folder = iter_dir(save_dir, iteration)
    if not folder.is_dir():
        return Verdict(False, f"{folder} is missing")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files")
    except FileNotFoundError:
        shards = list(folder.glob("*.distcp"))
        if shards or (folder / DCP_METADATA).exists():
            # torch.distributed.checkpoint (the FSDP2 trainer): its coordinator writes .metadata once
            # every rank's shards are written.
            if not (folder / DCP_METADATA).is_file() or (folder / DCP_METADATA).stat().st_size == 0:
                return Verdict(False, f"{folder} has no {DCP_METADATA}: its save did not finish")
            if any(p.stat().st_size == 0 for p in shards):
                return Verdict(False, f"{folder} has an empty shard")
            return Verdict(True, "a DCP checkpoint (written by the entry itself)")
        models = list(folder.glob("mp_rank_*/*.pt"))
        if not models or any(p.stat().st_size == 0 for p in models):
            return Verdict(False, f"{folder} has no model file, or an empty one")
        return Verdict(True, "no manifest (written by the entry itself)")
    except (OSError, ValueError, KeyError, TypeError):
        return Verdict(False, f"{folder / MANIFEST} is unreadable")
    for name, info in files.items():
        path = folder / name
        if not _inside(folder, name):  # an absolute path, `..`, a device: it says nothing of this checkpoint
            return Verdict(False, f"{folder / MANIFEST} names {name!r}, which is not a file of the checkpoint")
        try:
            info_on_disk = path.lstat()
        except OSError:
            return Verdict(False, f"{path} is missing")
        if not stat.S_ISREG(info_on_disk.st_mode):
            return Verdict(False, f"{path} is not a regular file")
        size = info_on_disk.st_size
        if not isinstance(info, dict) or size != info.get("size"):
            return Verdict(False, f"{path} has {size} bytes, the manifest says {info.get('size')}")
        if deep and not _matches(path, info):
            return Verdict(False, f"{path} does not match its checksum in the manifest")
    return Verdict(True)


def _inside(folder: Path, name: object) -> bool:
    """A manifest entry is a relative path inside the checkpoint's folder."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\x00" in name:
        return False
    parts = Path(name).parts
    return ".." not in parts and not Path(name).is_absolute()


def latest_whole(save_dir: str | os.PathLike) -> int | None:
    """The newest checkpoint that is whole (sizes checked): the tracker's, else an older one.

    This is where a resume starts, and what requeue measures progress from."""
    tracked = latest_iteration(save_dir)
    candidates = ([tracked] if tracked is not None else []) + [
        i for i in reversed(saved_iterations(save_dir)) if tracked is None or i < tracked
    ]
    return next((i for i in candidates if verify(save_dir, i).ok), None)


def declared(folder: str | os.PathLike, pattern: str) -> tuple[int, str] | None:
    """The newest checkpoint an entry keeps its own way (`resume:`): the entry of `folder` whose name
    matches `pattern` with the highest step (its first group), as (step, name); None if there is none."""
    try:
        names = [p.name for p in Path(folder).iterdir()]
    except OSError:
        return None
    found = []
    for name in names:
        match = re.fullmatch(pattern, name)
        if match and match.groups() and (match.group(1) or "").isdigit():
            found.append((int(match.group(1)), name))
    return max(found) if found else None


def latest(spec, folder: str | os.PathLike) -> int | None:
    """The run's newest checkpoint in `folder`, the way its entry keeps them: Megatron's layout
    (`latest_whole`), or, for an entry that declares `resume:`, the step of its newest one."""
    if spec.resume.dir:
        found = declared(folder, spec.resume.pattern)
        return found[0] if found else None
    return latest_whole(folder)


def repair_tracker(save_dir: str | os.PathLike) -> str | None:
    """Point a tracker that an entry writes in place (not atomically) at the newest whole checkpoint,
    atomically, before a start reads it: a stop during a save can leave it empty, or naming a folder
    whose save did not finish. Returns what it did, or None when the tracker was right."""
    whole, tracked = latest_whole(save_dir), latest_iteration(save_dir)
    if whole is None or whole == tracked:
        return None
    said = f"said {tracked}" if tracked is not None else "was missing or unreadable"
    write_tracker(Path(save_dir), whole)
    return f"the checkpoint tracker {said}; it names {whole} now, the newest whole checkpoint"
