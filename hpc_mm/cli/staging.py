"""What `hpc-mm --remote ... submit` sends to the login node: the job as resolved here, the files
it names that exist here, the entry's folder when its script lives here; as one tar stream."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

# Never sent with an entry's folder.
SKIP = {".git", "runs", "checkpoints", "__pycache__", ".venv", "node_modules"}


def passed_on(args) -> list[str]:
    """submit's flags that are not about the job's content (that was applied here)."""
    out = []
    for flag, value in (("--run-dir", args.run_dir), ("--max-parallel", args.max_parallel)):
        if value is not None:
            out += [flag, str(value)]
    for flag in ("json", "wait", "dry_run", "zip"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    for item in args.after:
        out += ["--after", item]
    for item in args.sweep:
        out += ["--sweep", item]
    return out


def staged_job(spec, folder: str) -> tuple[str, dict[str, Path]]:
    """The resolved job with the files it names that exist here pointing at their copies."""
    import dataclasses

    from hpc_mm.job.jobfile import job_text

    copies: dict[str, Path] = {}

    def copy(value: str | None, name: str) -> str | None:
        if value is None or not Path(value).is_file():
            return value
        copies[f"{folder}/files/{name}"] = Path(value)
        return f"files/{name}"

    mm = {n: copy(getattr(spec.mm, n), f"{n}-{Path(getattr(spec.mm, n)).name}") for n in ("data", "model", "tool")}
    config = copy(spec.entry.config, f"config-{Path(spec.entry.config).name}" if spec.entry.config else "")
    workdir = spec.entry.workdir
    script = Path(workdir) / spec.entry.script
    if script.is_file():  # the entry's code lives here: send its folder
        for path in walk(Path(workdir)):
            copies[f"{folder}/workdir/{path.relative_to(workdir)}"] = path
        workdir = "workdir"
    elif Path(workdir).is_dir():
        workdir = "."  # a module or a command from the cluster's environment: run it in the staged folder
    spec = dataclasses.replace(
        spec,
        mm=dataclasses.replace(spec.mm, **{k: v for k, v in mm.items() if v is not None}),
        entry=dataclasses.replace(spec.entry, workdir=workdir, config=config),
    )
    return job_text(spec), copies


def walk(folder: Path):
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for name in names:
            yield Path(root) / name


def tar(files: dict[str, Path | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for arcname, source in files.items():
            if isinstance(source, bytes):
                info = tarfile.TarInfo(arcname)
                info.size, info.mode, info.mtime = len(source), 0o640, int(time.time())
                tar.addfile(info, io.BytesIO(source))
            else:
                tar.add(str(source), arcname=arcname, recursive=False)
    return buffer.getvalue()
