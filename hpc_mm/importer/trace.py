"""Run a launch script with its launchers replaced by recorders, and read what it would have run.

The script runs under bash, in a copy of its working folder (small files only: code, JSON, YAML;
weights and data are left behind), with a private HOME and TMPDIR, a time limit and capped output, and,
where the machine allows namespaces, with every other mount read-only and no network: nothing outside
the copy can be written, even by a command named by its absolute path. Every launcher (torchrun,
msrun, accelerate, python, ray, deepspeed, ...) and every command that changes something (pip, git,
rm, cp, mv, chmod, pkill, tee, ...) is a recorder first on PATH: it writes its argv, working folder
and environment, prints nothing and succeeds (tee passes its input through). A DEBUG trap notes the
script line each command runs from, the files it sources, its `ulimit` and `unset` lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hpc_mm.errors import UserError

# Stand-ins: the launchers, and the commands whose effects must not leave the copy.
LAUNCHERS = ("torchrun", "msrun", "accelerate", "python", "python3", "ray", "deepspeed", "mpirun", "srun", "sbatch")
SIDE_EFFECTS = (
    "pip", "pip3", "git", "rm", "cp", "mv", "chmod", "chown", "pkill", "kill", "killall", "wget", "curl", "ssh",
    "scp", "rsync", "npu-smi", "nvidia-smi", "hccn_tool", "tee", "sleep", "conda", "apt", "apt-get", "yum", "ln",
)  # fmt: skip
TIMEOUT = 60  # seconds for the whole script
MAX_COPY_FILE = 1 << 20  # files larger than this are not copied (weights, data)
MAX_COPY_TOTAL = 200 << 20
MAX_OUTPUT = 64 << 10
# Variables the tracer itself sets: never the script's.
OWN = ("PATH", "HOME", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_", "BASH_ENV", "HPC_MM_TRACE", "HPC_MM_TRACE_AT",
       "LANG", "LC_ALL", "USER", "LOGNAME", "SHELL", "TERM")  # fmt: skip

RECORDER = r"""#!/bin/bash -p
# hpc-mm import: a recorder standing in for this command (-p: without the tracing prelude)
rec="$HPC_MM_TRACE/${EPOCHREALTIME/./}-$$-$RANDOM"
printf '%s\0' "${0##*/}" "$@" > "$rec.argv"
printf '%s' "$PWD" > "$rec.cwd"
printf '%s' "${HPC_MM_TRACE_AT:-}" > "$rec.at"
/usr/bin/env -0 > "$rec.env"
if [ "${0##*/}" = tee ]; then /bin/cat; fi
exit 0
"""

# Read by every bash the script starts (BASH_ENV): the line each command runs from, what it sources.
PRELUDE = r"""set -T
trap 'export HPC_MM_TRACE_AT="${BASH_SOURCE[0]:-?}:${LINENO}"
case "$BASH_COMMAND" in
  "source "*|". "*|"ulimit "*|"unset "*) printf "%s\t%s\0" "$HPC_MM_TRACE_AT" "$BASH_COMMAND" >> "$HPC_MM_TRACE/lines";;
esac' DEBUG
"""


@dataclass(frozen=True)
class Command:
    """One command the script ran through a recorder."""

    argv: tuple[str, ...]  # argv[0] is the command's name
    cwd: Path  # in the user's folder (mapped back from the copy)
    env: dict[str, str]  # what the script exported by then (not what the tracer started it with)
    at: str  # "script:line" it ran from

    @property
    def name(self) -> str:
        return self.argv[0]


@dataclass
class Trace:
    script: Path
    workdir: Path  # the user's folder the script ran in
    commands: list[Command] = field(default_factory=list)
    sourced: list[tuple[str, str]] = field(default_factory=list)  # (at, the line: source F / . F)
    ulimits: list[tuple[str, str]] = field(default_factory=list)
    unsets: list[tuple[str, str]] = field(default_factory=list)
    returncode: int = 0
    output: str = ""  # the script's own stdout and stderr (capped)
    confined: bool = True  # ran with nothing writable outside its copy and no network (namespaces)


def copy_tree(source: Path, target: Path) -> None:
    """The folder's small files (code, configs), its links as links; big files and .git left out."""
    total = 0
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__", ".venv", "node_modules")]
        rel = Path(root).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = Path(root) / name
            try:
                if path.is_symlink():
                    os.symlink(os.readlink(path), target / rel / name)
                    continue
                size = path.stat().st_size
            except OSError:
                continue
            if size > MAX_COPY_FILE or total + size > MAX_COPY_TOTAL:
                continue
            total += size
            shutil.copy2(path, target / rel / name)


# Inside a new mount and network namespace: every mount read-only but the trace's own folder (bound
# onto itself first), and no network but loopback; then the script. $1 is that folder.
CONFINE = r"""T="$1"; shift
mount --make-rprivate / && mount --bind "$T" "$T" || exit 125
for m in $(awk '{print $5}' /proc/self/mountinfo); do
  case "$m" in "$T"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/mqueue) ;;
    *) mount -o remount,ro,bind "$m" 2>/dev/null ;;
  esac
done
touch / 2>/dev/null && exit 125
exec "$@"
"""


def _confined(folder: Path) -> list[str] | None:
    """The command prefix that runs a script with nothing writable outside `folder` and no network, where
    this machine allows namespaces (root, or unprivileged user namespaces); None where it does not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["--mount", "--net"], ["--user", "--map-root-user", "--mount", "--net"]):
        cmd = [unshare, *flags, "--", "/bin/sh", "-c", CONFINE, "confine", str(folder)]
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def trace(script: Path, args: list[str], workdir: Path, timeout: float = TIMEOUT) -> Trace:
    """Run `script ARGS` from `workdir` with recorders in place of its launchers."""
    script, workdir = Path(script).resolve(), Path(workdir).resolve()
    if not script.is_file():
        raise UserError.one("SCRIPT", f"{script} is not a file", "give the launch script's path")
    if not workdir.is_dir():
        raise UserError.one("--workdir", f"{workdir} is not a folder", "the folder you run the script from")
    with tempfile.TemporaryDirectory(prefix="hpc-mm-import-") as tmp:
        tmp = Path(tmp)
        copy = tmp / "work"
        copy_tree(workdir, copy)
        try:
            script_copy = copy / script.relative_to(workdir)
        except ValueError:  # a script outside the folder it runs from: its own folder beside it
            copy_tree(script.parent, tmp / "script")
            script_copy = tmp / "script" / script.name
        bin_dir, records, home = tmp / "bin", tmp / "records", tmp / "home"
        for folder in (bin_dir, records, home, tmp / "tmp"):
            folder.mkdir()
        for name in LAUNCHERS + SIDE_EFFECTS:
            (bin_dir / name).write_text(RECORDER)
            (bin_dir / name).chmod(0o755)
        (tmp / "prelude.sh").write_text(PRELUDE)
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(tmp / "tmp"),
            "LANG": "C.UTF-8",
            "USER": os.environ.get("USER", "user"),
            "BASH_ENV": str(tmp / "prelude.sh"),
            "HPC_MM_TRACE": str(records),
        }
        confine = _confined(tmp)
        child = subprocess.Popen(
            [*(confine or []), "/bin/bash", str(script_copy), *args],
            cwd=copy,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the script and everything it starts: stopped together
        )
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_session(child)
            raise UserError.one(
                "SCRIPT",
                f"{script.name} did not end within {timeout:.0f} s under the recorders (it waits for something)",
                "a launch script that loops or waits cannot be imported; write the job file by hand",
            ) from exc
        finally:
            _kill_session(child)  # whatever it left running in the background
        returncode = child.returncode
        output = _unmap(out[-MAX_OUTPUT:].decode(errors="replace"), copy, workdir, script_copy, script)
        _refuse_missing_arguments(script, output, returncode)
        found = Trace(script, workdir, returncode=returncode, output=output, confined=confine is not None)
        found.commands = _commands(records, copy, workdir, script_copy, script, env)
        for at, line in _lines(records / "lines", script_copy, script):
            word = line.split(None, 1)[0]
            (found.sourced if word in ("source", ".") else found.ulimits if word == "ulimit" else found.unsets).append(
                (at, line)
            )
        return found


# bash's words for a parameter the script needs and does not have: ${1:?message}, ${X?}, set -u.
_MISSING = re.compile(r": line \d+: ([A-Za-z_][A-Za-z0-9_]*|[0-9]+): (.*)$")


def _kill_session(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _refuse_missing_arguments(script: Path, output: str, returncode: int) -> None:
    """A script that stopped on an argument (or variable) it needs and was not given: one line naming it."""
    if returncode == 0:
        return
    for line in output.splitlines():
        match = _MISSING.search(line)
        if not match:
            continue
        name, said = match.groups()
        what = f"its argument ${name}" if name.isdigit() else f"${name}"
        if said.strip() in ("unbound variable", "parameter null or not set") or name.isdigit() or "?" in line:
            raise UserError.one(
                "SCRIPT",
                f"{script.name} needs {what} ({said.strip()}), which it was not given",
                f"pass the script's arguments after it: hpc-mm import {script.name} ARG...",
            )


def _unmap(text: str, copy: Path, workdir: Path, script_copy: Path, script: Path) -> str:
    return text.replace(str(script_copy), str(script)).replace(str(copy), str(workdir))


def _commands(records: Path, copy: Path, workdir: Path, script_copy: Path, script: Path, base: dict) -> list[Command]:
    out = []
    for argv_file in sorted(records.glob("*.argv"), key=lambda p: (int(p.name.split("-")[0]), p.name)):
        stem = argv_file.with_suffix("")
        argv = argv_file.read_bytes().split(b"\0")[:-1]
        env = {}
        for item in stem.with_suffix(".env").read_bytes().split(b"\0"):
            name, sep, value = item.decode(errors="replace").partition("=")
            if sep and name not in OWN and base.get(name) != value:
                env[name] = _unmap(value, copy, workdir, script_copy, script)
        out.append(
            Command(
                tuple(_unmap(a.decode(errors="replace"), copy, workdir, script_copy, script) for a in argv),
                Path(_unmap(stem.with_suffix(".cwd").read_text(), copy, workdir, script_copy, script)),
                env,
                _unmap(stem.with_suffix(".at").read_text(), copy, workdir, script_copy, script),
            )
        )
    return out


def _lines(path: Path, script_copy: Path, script: Path) -> list[tuple[str, str]]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for item in data.split(b"\0")[:-1]:
        at, _, line = item.decode(errors="replace").partition("\t")
        out.append((at.replace(str(script_copy), str(script)), line.strip()))
    return out


def to_json(found: Trace) -> dict:
    """What the recorders saw, as `hpc-mm import --trace` prints it."""
    return {
        "script": str(found.script),
        "workdir": str(found.workdir),
        "returncode": found.returncode,
        "commands": [{"argv": list(c.argv), "cwd": str(c.cwd), "env": c.env, "at": c.at} for c in found.commands],
        "sourced": found.sourced,
        "ulimits": found.ulimits,
        "unsets": found.unsets,
    }


__all__ = ["Command", "Trace", "trace", "to_json", "json"]
