"""Imported stages as job files: YAML a user reads, each section with the script line it came from,
what hpc-mm runs differently and what it could not carry as comments at the top."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from hpc_mm.importer.translate import Imported

ORDER = ("name", "entry", "slurm", "distributed", "mm", "gpt", "checkpoint", "resume", "requeue", "fault", "env",
         "setup", "post", "after")  # fmt: skip


def job_name(script: Path) -> str:
    """A safe Slurm job name from the script's name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", script.stem).strip("-._") or "job"
    return name[:64] if name[0].isalnum() else f"job-{name}"[:64]


def texts(imported: Imported, script: Path, args: list[str]) -> list[str]:
    """One job file's text per stage."""
    out = []
    for i, stage in enumerate(imported.stages):
        head = [f"# Imported by `hpc-mm import` from {shlex.join([str(script), *args])}"]
        if len(imported.stages) > 1:
            head.append(f"# stage {i + 1} of {len(imported.stages)}: submit them together, in order, as one pipeline")
        if imported.changed and i == len(imported.stages) - 1:
            head.append("#\n# What hpc-mm runs differently from the script, and why:")
            head += [f"#   - {line}" for line in imported.changed]
        if imported.not_carried and i == len(imported.stages) - 1:
            head.append("#\n# What this job file does not carry:")
            head += [f"#   - {line}" for line in imported.not_carried]
        body = []
        for key in sorted(stage.job, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
            if key in stage.comments:
                body.append(f"# from {stage.comments[key]}")
            body.append(yaml.safe_dump({key: stage.job[key]}, sort_keys=False, allow_unicode=True, width=1000))
        out.append("\n".join(head) + "\n\n" + "".join(f"{b}\n" if b.startswith("#") else b for b in body))
    return out


def write_jobs(imported: Imported, paths: list[Path], script: Path, args: list[str]) -> list:
    """Write every stage and check it as `validate` does; a Megatron-style stage whose options or files
    hpc-mm's tables cannot check is written as a command instead (its arguments verbatim), and said so.
    The problems of the stages that still do not validate."""
    from hpc_mm.errors import UserError
    from hpc_mm.job.jobfile import load_job

    def write() -> None:
        for path, text in zip(paths, texts(imported, script, args)):
            path.write_text(text)

    write()
    problems = []
    for i, path in enumerate(paths):
        try:
            load_job(path)
            continue
        except UserError as exc:
            found = exc.problems
        stage = imported.stages[i]
        if stage.job["entry"].get("kind") == "megatron" and all(_not_megatrons(p, stage.job) for p in found):
            why = "; ".join(f"{p.field}: {p.message}" for p in found[:2])
            imported.stages[i] = stage.as_command(why)
            imported.changed.append(
                f"{stage.launch.at if stage.launch else path}: run as a command, its arguments "
                f"as written (hpc-mm cannot check them as Megatron's: {why})"
            )
            write()
            try:
                load_job(path)
                continue
            except UserError as exc:
                found = exc.problems
        problems += found
    return problems


def _not_megatrons(problem, job: dict) -> bool:
    """A problem that says the entry does not take Megatron's arguments as hpc-mm's tables know them
    (an option they do not have, a Megatron argument it was never given, mm files of another shape, the
    seed's tools file it never named), not that a value the script gave is wrong."""
    return (
        "is not an option of Megatron" in problem.message
        or "is required" in problem.message
        or problem.field.startswith("mm.")
        and "has no top-level" in problem.message
        or problem.field == "mm.tool"
        and "tool" not in job.get("mm", {})
    )
