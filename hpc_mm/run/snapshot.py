"""The entry's code as it was submitted (`entry.snapshot`, on by default): every start of the run runs it.

A job waits in the queue, is requeued and restarted over days while its user edits and pulls the
checkout; a requeue must not resume a checkpoint with other code. Where the entry's folder is in a git
checkout, `submit` (and render, local, launch by hand) copies the checkout's tracked files as they
are, uncommitted changes included, into the run directory once:

    <run>/code/<fingerprint>/...   the checkout's tracked files (submodules too), as they were
    <run>/code.json                the commit, whether it was dirty and which files were, the checkout,
                                   the fingerprint (SHA-256 over the tracked files' names, modes, contents)

and the run's job file points entry.workdir into that copy. What git does not track there (data,
weights, a Megatron copied in, caches) is not copied: each such path is a link to the checkout, so the
entry finds it where it always did; untracked files that are not ignored are named in a warning.
Submitting into a run directory whose code differs is refused, with the size of the difference, unless
`--new-code` (then the new code runs from the next start on). A staged folder from `--remote` carries
the checkout's record in MARKER: the login node snapshots it under the local commit.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.errors import Problem, UserError
from hpc_mm.run.atomic import PRIVATE, publish_folder, write_atomic

CODE = "code"  # the folder in the run directory
CODE_FILE = "code.json"
MARKER = ".hpc-mm-code.json"  # in a staged folder (--remote): the checkout's record, made where it was
GIT_SECONDS = 60


@dataclass(frozen=True)
class Code:
    commit: str  # the checkout's HEAD
    dirty: bool  # tracked files differ from it
    fingerprint: str  # SHA-256 over the tracked files (names, modes, contents) as they were
    source: str  # the checkout's top folder
    workdir: str  # entry.workdir inside the checkout ("." for its top)
    files: int = 0
    changed: tuple[str, ...] = ()  # tracked files with uncommitted changes
    untracked: tuple[str, ...] = ()  # not ignored, not tracked: linked, not copied (warned of)
    links: tuple[str, ...] = ()  # every path linked to the checkout (untracked and ignored)
    taken: float = 0.0
    origin: str = ""  # --remote: the checkout on the machine it was submitted from (`source` is the staged copy)

    @property
    def short(self) -> str:
        return self.commit[:12] + (" (with uncommitted changes)" if self.dirty else "")

    def folder(self, run_dir: Path) -> Path:
        return Path(run_dir) / CODE / self.fingerprint[:16]

    def entry_workdir(self, run_dir: Path) -> str:
        return str(self.folder(run_dir) / self.workdir) if self.workdir != "." else str(self.folder(run_dir))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, value: dict) -> Code | None:
        try:
            names = {f.name for f in dataclasses.fields(cls)}
            data = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items() if k in names}
            return cls(**data)
        except (TypeError, ValueError):
            return None


def _git(folder: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=GIT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _names(output: str | None) -> list[str]:
    return [n for n in (output or "").split("\0") if n]


def fingerprint(top: Path, files: list[str]) -> str:
    """SHA-256 over each file's name, executable bit and content (a link: its target)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        path = top / name
        digest.update(name.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"l" + os.readlink(path).encode())
        else:
            digest.update(b"x" if os.stat(path).st_mode & stat.S_IXUSR else b"f")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _dotted(name: str) -> str | None:
    """The path up to its first dot-named part (`.env`, `configs/.secrets`), or None."""
    parts = name.split("/")
    first = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
    return "/".join(parts[: first + 1]) if first is not None else None


def tracked(top: Path) -> list[str]:
    """The checkout's tracked files that exist (a deleted one is not part of the code as it is), but
    not those under a dot-name: `.env`, `.ssh`, `.github` are never code an entry runs, and a secret
    tracked by mistake is not copied into a run (it is linked, as untracked files are)."""
    files = _names(_git(top, "ls-files", "-z", "--recurse-submodules"))
    return [n for n in files if not _dotted(n) and ((top / n).is_symlink() or (top / n).is_file())]


def _staged(folder: Path) -> tuple[Path, dict] | None:
    """A staged folder from --remote with the record of the checkout it came from."""
    for top in (folder, *folder.parents):
        marker = top / MARKER
        if marker.is_file():
            try:
                return top, json.loads(marker.read_text())
            except (OSError, ValueError):
                return None
    return None


def state(workdir: str | os.PathLike) -> Code | None:
    """The code of the checkout holding `workdir` as it is now; None where it is not in one."""
    workdir = Path(workdir)
    staged = _staged(workdir)
    if staged is not None:
        top, said = staged
        files = sorted(
            str(p.relative_to(top)) for p in top.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MARKER
        )
        return Code(
            commit=str(said.get("commit", "")),
            dirty=bool(said.get("dirty")),
            fingerprint=fingerprint(top, files),
            source=str(top),
            origin=str(said.get("source", "")),
            workdir=str(workdir.relative_to(top)) if workdir != top else ".",
            files=len(files),
            changed=tuple(said.get("changed", ())),
            taken=time.time(),
        )
    top_text = _git(workdir, "rev-parse", "--show-toplevel")
    commit = _git(workdir, "rev-parse", "HEAD")
    if not top_text or not commit:
        return None
    top = Path(top_text.strip())
    files = tracked(top)
    dotted = {_dotted(n) for n in _names(_git(top, "ls-files", "-z")) if _dotted(n)}
    changed = _names(_git(top, "diff", "--name-only", "-z", "HEAD"))
    untracked = _names(_git(top, "ls-files", "-z", "--others", "--exclude-standard", "--directory"))
    ignored = _names(_git(top, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"))
    return Code(
        commit=commit.strip(),
        dirty=bool(changed),
        fingerprint=fingerprint(top, files),
        source=str(top),
        workdir=str(workdir.resolve().relative_to(top.resolve())) if workdir.resolve() != top.resolve() else ".",
        files=len(files),
        changed=tuple(changed),
        untracked=tuple(n.rstrip("/") for n in untracked),
        links=tuple(sorted(dotted)) + tuple(n.rstrip("/") for n in untracked + ignored),
        taken=time.time(),
    )


def describe(code: Code | None, started: dict | None = None) -> str | None:
    """One line on the code a run runs: its copy's commit, or what the last start found in the checkout."""
    if code is not None:
        changed = f": {', '.join(code.changed[:5])}{' ...' if len(code.changed) > 5 else ''}" if code.changed else ""
        return f"{code.short}{changed} from {code.origin or code.source}, copied into the run ({code.files} files)"
    if started and started.get("workdir_commit"):
        dirty = " (with uncommitted changes)" if started.get("workdir_dirty") else ""
        return f"{str(started['workdir_commit'])[:12]}{dirty}: the checkout at the last start (not copied)"
    return None


def marker(code: Code) -> bytes:
    """What a staged folder (--remote) carries of the checkout it was made from."""
    return json.dumps(
        {"commit": code.commit, "dirty": code.dirty, "changed": list(code.changed), "source": code.source}
    )


def sendable(code: Code) -> list[str]:
    """The tracked files --remote sends (`tracked`: nothing under a dot-name)."""
    return tracked(Path(code.source))


def recorded(run_dir: str | os.PathLike) -> Code | None:
    try:
        return Code.from_json(json.loads((Path(run_dir) / CODE_FILE).read_text()))
    except (OSError, ValueError):
        return None


def applies(spec) -> bool:
    """A snapshot is taken for an entry of the user's own folder (not hpc-mm's built-in trainer, not a
    command from the cluster's environment) when the job asks (entry.snapshot, on by default)."""
    return bool(spec.entry.snapshot) and not spec.builtin and Path(spec.entry.workdir).is_dir()


def _files(code: Code, top: Path) -> list[str]:
    if _staged(top) is not None:
        return sorted(
            str(p.relative_to(top)) for p in top.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MARKER
        )
    return tracked(top)


def difference(copy: Path, top: Path, files: list[str]) -> str:
    """How far the checkout's files (`files` under `top`) are from the run's copy: files added,
    removed, changed, and the lines of the text files that changed."""
    theirs = {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() and not p.is_symlink()}
    ours = set(files)
    changed = [n for n in sorted(ours & theirs) if _digest(top / n) != _digest(copy / n)]
    added, removed = len(ours - theirs), len(theirs - ours)
    plus = minus = 0
    for name in changed:
        try:
            a = (copy / name).read_text().splitlines()
            b = (top / name).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in difflib.unified_diff(a, b, lineterm="", n=0):
            if line.startswith("+") and not line.startswith("+++"):
                plus += 1
            elif line.startswith("-") and not line.startswith("---"):
                minus += 1
    parts = (
        [f"{len(changed)} changed"]
        + ([f"{added} added"] if added else [])
        + ([f"{removed} removed"] if removed else [])
    )
    return f"{', '.join(parts)} file(s), +{plus} -{minus} lines"


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "l" + os.readlink(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def check_same(spec, run_dir: Path, code: Code, new_code: bool) -> None:
    """A run directory holds the code of its first submission: other code is refused unless
    `--new-code` (a checkpoint resumed with other code is another experiment, or a silent bug)."""
    old = recorded(run_dir)
    if old is None or old.fingerprint == code.fingerprint or new_code:
        return
    copy = old.folder(run_dir)
    size = difference(copy, Path(code.source), _files(code, Path(code.source))) if copy.is_dir() else "different files"
    raise UserError(
        Problem(
            "entry.workdir",
            f"{code.source} is at {code.short}; the run in {run_dir} runs {old.short}: {size}",
            "pass --new-code to run the new code from the next start on, or submit into a new --run-dir",
        )
    )


def take(code: Code, run_dir: Path) -> Path:
    """Copy the checkout's code into the run directory (once: the same code is there already) and
    record it; older copies of the run's code are removed (no start is using them: the run is not
    active when it is submitted into)."""
    folder = code.folder(run_dir)
    top = Path(code.source) if _staged(Path(code.source)) is None else _staged(Path(code.source))[0]
    if not folder.is_dir():
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        for name in _files(code, top):
            target = partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = top / name
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
        for name in code.links:  # what git does not track stays where it is: linked
            target = partial / name
            if not os.path.lexists(target) and os.path.lexists(top / name):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(top / name, target)
        partial.mkdir(parents=True, exist_ok=True)
        publish_folder(partial, folder)
    for other in (Path(run_dir) / CODE).iterdir():
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)
    write_atomic(Path(run_dir) / CODE_FILE, json.dumps(code.to_json(), indent=1), mode=PRIVATE)
    return folder


def start_fields(run_dir: Path, workdir: Path) -> dict:
    """What a start records of the code it runs: the run's copy (its commit), else the checkout's."""
    code = recorded(run_dir)
    if code is not None and Path(workdir).is_relative_to(code.folder(run_dir)):
        return {"workdir_commit": code.commit, "workdir_dirty": code.dirty, "code": code.fingerprint[:16]}
    commit = _git(Path(workdir), "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(Path(workdir), "status", "--porcelain", "--untracked-files=no")
    return {"workdir_commit": commit.strip(), "workdir_dirty": bool((status or "").strip())}
