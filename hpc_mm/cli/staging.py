"""What `hpc-mm --remote ... submit` sends to the login node, and nothing else: the job as resolved
here, the files it names that exist here (the mm files, the FSDP2 YAML), and, when the entry's script
lives here, its folder's code: without dot-files and dot-folders (.env, .ssh, .aws, .git hold secrets
and history), caches, run and checkpoint folders, weights and data archives, and what a
`.hpc-mm-ignore` or `.gitignore` in that folder lists. It is streamed as one tar archive, never held in
memory, its size said first and capped (HPC_MM_REMOTE_MAX_MB, default 200)."""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
import time
from pathlib import Path

from hpc_mm.errors import UserError

# Folders never sent with an entry's folder (and every folder whose name starts with a dot).
SKIP = {"runs", "checkpoints", "ckpt", "__pycache__", "node_modules", "wandb", "logs", "outputs", "venv"}
# Files never sent: weights, checkpoints, archives and data an entry's folder often holds.
HEAVY = (
    "*.pt", "*.pth", "*.bin", "*.safetensors", "*.ckpt", "*.gguf", "*.h5", "*.onnx", "*.npy", "*.npz",
    "*.tar", "*.tar.gz", "*.tgz", "*.zip", "*.parquet", "*.arrow", "*.mp4", "*.distcp", "*.pyc",
)  # fmt: skip
IGNORE_FILES = (".hpc-mm-ignore", ".gitignore")
MAX_MB = 200


def passed_on(args) -> list[str]:
    """submit's flags that are not about the job's content (that was applied here)."""
    out = []
    for flag, value in (("--run-dir", args.run_dir), ("--max-parallel", args.max_parallel)):
        if value is not None:
            out += [flag, str(value)]
    for flag in ("json", "wait", "dry_run", "zip", "new_code"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    for item in args.after:
        out += ["--after", item]
    for item in args.sweep:
        out += ["--sweep", item]
    return out


def staged_job(spec, folder: str) -> tuple[str, dict[str, Path | bytes]]:
    """The resolved job with the files it names that exist here pointing at their copies."""
    import dataclasses

    from hpc_mm.job.entries import contract
    from hpc_mm.job.jobfile import job_text
    from hpc_mm.run import snapshot

    copies: dict[str, Path | bytes] = {}

    def copy(value: str | None, name: str) -> str | None:
        if value is None or not Path(value).is_file():
            return value
        copies[f"{folder}/files/{name}"] = Path(value)
        return f"files/{name}"

    staged: dict[str, dict[str, str]] = {}  # section -> field -> the value in the staged job
    for key in contract(spec).copies(spec):  # the files the entry reads ("mm.data", "entry.config")
        section, name = key.split(".")
        value = getattr(getattr(spec, section), name)
        staged.setdefault(section, {})[name] = copy(value, f"{name}-{Path(value).name}")
    workdir = spec.entry.workdir
    script = Path(workdir) / spec.entry.script
    code = snapshot.state(workdir) if snapshot.applies(spec) and script.is_file() else None
    if code is not None:  # a git checkout: its tracked files as they are, and its commit (run/snapshot.py)
        for name in snapshot.sendable(code):
            copies[f"{folder}/workdir/{name}"] = Path(code.source) / name
        copies[f"{folder}/workdir/{snapshot.MARKER}"] = snapshot.marker(code).encode()
        workdir = "workdir" if code.workdir == "." else f"workdir/{code.workdir}"
    elif script.is_file():  # the entry's code lives here: send its folder
        for path in walk(Path(workdir)):
            copies[f"{folder}/workdir/{path.relative_to(workdir)}"] = path
        workdir = "workdir"
    elif Path(workdir).is_dir():
        workdir = "."  # a module or a command from the cluster's environment: run it in the staged folder
    staged["entry"] = {**staged.get("entry", {}), "workdir": workdir}
    spec = dataclasses.replace(
        spec, **{section: dataclasses.replace(getattr(spec, section), **fields) for section, fields in staged.items()}
    )
    return job_text(spec), copies


def _ignored(folder: Path) -> list[str]:
    """The patterns of the folder's .hpc-mm-ignore and .gitignore (comments, negations left out)."""
    out = []
    for name in IGNORE_FILES:
        try:
            lines = (folder / name).read_text(errors="replace").splitlines()[:10000]
        except OSError:
            continue
        out += [line.strip().rstrip("/") for line in lines if line.strip() and line.strip()[0] not in "#!"]
    return out


def _matches(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatch(relative, p.lstrip("/")) or ("/" not in p.lstrip("/") and fnmatch.fnmatch(name, p))
        for p in patterns
    )


def walk(folder: Path):
    """The entry folder's files that are sent: its code, not its secrets, caches, outputs or weights.
    Regular files only (a link could point anywhere on this machine)."""
    patterns = _ignored(folder)
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIP
            and not _matches(str((here / d).relative_to(folder)), patterns)
            and not (here / d).is_symlink()
        ]
        for name in names:
            path = here / name
            relative = str(path.relative_to(folder))
            if name.startswith(".") or any(fnmatch.fnmatch(name, h) for h in HEAVY) or _matches(relative, patterns):
                continue
            if path.is_file() and not path.is_symlink():
                yield path


def size(files: dict[str, Path | bytes]) -> int:
    return sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in files.values())


def check_size(files: dict[str, Path | bytes]) -> int:
    """The bytes to send; more than HPC_MM_REMOTE_MAX_MB is refused, naming the largest files."""
    total = size(files)
    cap = os.environ.get("HPC_MM_REMOTE_MAX_MB", str(MAX_MB))
    limit = int(cap) if cap.isdigit() else MAX_MB
    if total > limit * 1024 * 1024:
        largest = sorted(
            ((v.stat().st_size if isinstance(v, Path) else len(v), k) for k, v in files.items()), reverse=True
        )[:3]
        named = ", ".join(f"{k.split('/', 1)[-1]} ({n / 1e6:.0f} MB)" for n, k in largest)
        raise UserError.one(
            "--remote",
            f"the job's files come to {total / 1e6:.0f} MB, more than {limit} MB (largest: {named})",
            "list what the job does not need in .hpc-mm-ignore in the entry's folder, or raise HPC_MM_REMOTE_MAX_MB",
        )
    return total


def write_tar(files: dict[str, Path | bytes], out) -> None:
    """The files as one tar stream into `out` (a pipe), file by file: nothing held in memory."""
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for arcname, source in files.items():
            if isinstance(source, bytes):
                info = tarfile.TarInfo(arcname)
                info.size, info.mode, info.mtime = len(source), 0o640, int(time.time())
                tar.addfile(info, io.BytesIO(source))
            else:
                tar.add(str(source), arcname=arcname, recursive=False)


def tar(files: dict[str, Path | bytes]) -> bytes:
    buffer = io.BytesIO()
    write_tar(files, buffer)
    return buffer.getvalue()
