"""`hpc-mm --remote LOGIN COMMAND ...`: the login-node commands, from a laptop, over OpenSSH.

`submit` checks the job here first (the same validation, so a mistake costs no round trip), then
copies what the job needs onto the login node over the same connection: the job file as this
machine resolved it (--set, -N, ... applied), the mm files and the FSDP2 trainer's YAML it names,
and, for an entry script that lives here, its working folder (without .git, runs/, checkpoints/,
__pycache__). Paths that do not exist here are the cluster's own and are left as written. There
it runs `hpc-mm submit` on the copy. `status`, `logs` (-f too), `cancel` and `report` run on the
login node as they are given (run directories and job ids are the cluster's); `report`'s figure is
copied back next to where you are.

One SSH connection is shared by all of them (ControlMaster; it stays open 2 minutes), with your own
ssh config and keys; ssh never asks for a password in the middle of a command (BatchMode): use a key
(ssh-agent) or an open ControlMaster. Where: `--remote LOGIN` (an ssh destination or a Host of your
ssh config), else HPC_MM_REMOTE, else `remote:` in ~/.config/hpc-mm/config.yaml; in the same way
`remote_dir` (where it works on the login node: default ~/hpc-mm) and `remote_hpc_mm` (the hpc-mm
to run there: default `hpc-mm` on the login shell's PATH). HPC_MM_REMOTE=none turns it off.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_mm.cli import staging
from hpc_mm.errors import UserError
from hpc_mm.job import yamlfile

# The commands that run on the login node; the others (validate, render, args, ...) run here.
REMOTE_COMMANDS = ("submit", "status", "logs", "cancel", "report")
OFF = "none"
_MISSING, _NO_DIR = 91, 90


# A login: [user@]host[:port], host a name or an IPv4 address; never anything ssh could read as an option.
_LOGIN = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252})(?::(?P<port>\d{1,5}))?$"
)


def parse_login(value, where: str) -> tuple[str, int | None]:
    """`[user@]host[:port]` as ssh's destination and port; anything else is one error line."""
    if not isinstance(value, str):
        raise UserError.one(where, f"is {type(value).__name__}, not a login", "a login: [user@]host[:port]")
    m = _LOGIN.fullmatch(value)
    port = int(m["port"]) if m and m["port"] else None
    if m is None or (port is not None and not 0 < port < 65536):
        shown = value if value.isprintable() and len(value) <= 80 else repr(value[:80])
        raise UserError.one(
            where, f"{shown!r} is not a login", "[user@]host[:port]: a Host of your ssh config, or user@host"
        )
    return (f"{m['user']}@{m['host']}" if m["user"] else m["host"]), port


def _setting(config: dict, env: str, key: str, default: str) -> str:
    value = os.environ.get(env) or config.get(key) or default
    if not isinstance(value, str) or not value.strip() or not value.isprintable() or value.startswith("-"):
        where = env if os.environ.get(env) else key
        raise UserError.one(where, f"{value!r} is not a path", "a folder or a program, by its path or name")
    return value


@dataclass(frozen=True)
class Remote:
    login: str
    directory: str = "hpc-mm"
    hpc_mm: str = "hpc-mm"
    port: int | None = None

    @classmethod
    def find(cls, flag: str | None) -> Remote | None:
        """--remote, else the environment, else the user's config file; None: run here."""
        if flag is not None:
            where, login = "--remote", flag
        elif os.environ.get("HPC_MM_REMOTE") is not None:
            where, login = "HPC_MM_REMOTE", os.environ["HPC_MM_REMOTE"]
        else:
            config = _config()
            where, login = "remote", config.get("remote")
            if login is None or login == OFF:
                return None
        if login == OFF or (where == "HPC_MM_REMOTE" and login == ""):
            return None
        destination, port = parse_login(login, where)
        config = _config()
        directory = _setting(config, "HPC_MM_REMOTE_DIR", "remote_dir", "hpc-mm")
        hpc_mm = _setting(config, "HPC_MM_REMOTE_HPC_MM", "remote_hpc_mm", "hpc-mm")
        return cls(destination, directory, hpc_mm, port)

    # ------------------------------------------------------------------ ssh
    def ssh(self, remote_command: str) -> list[str]:
        control = _control_folder()
        return [
            "ssh",
            "-o",
            "BatchMode=yes",  # never a password prompt in the middle of a command
            "-o",
            "ConnectTimeout=15",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={control}/%C",
            "-o",
            "ControlPersist=120",
            *(["-p", str(self.port)] if self.port else []),
            "--",  # the destination and the command after it: never an option, whatever they hold
            self.login,
            remote_command,
        ]

    def shell(self, argv: list[str], then: str | None = None) -> str:
        """The login shell's command: into remote_dir, hpc-mm there or a clear exit, then argv."""
        where = self.directory[2:] if self.directory.startswith("~/") else self.directory
        q = shlex.quote
        return (
            f"HPC_MM_REMOTE={OFF}; export HPC_MM_REMOTE; "
            f"{{ mkdir -p {q(where)} && cd {q(where)}; }} || exit {_NO_DIR}; "
            f"command -v {q(self.hpc_mm)} >/dev/null 2>&1 || exit {_MISSING}; "
            + (then if then is not None else "exec " + " ".join(q(a) for a in [self.hpc_mm, *argv]))
        )

    def run(self, argv: list[str], stdin=None, capture: bool = False, then: str | None = None):
        """Run on the login node: standard output passed on (or captured), ssh's own complaints
        turned into one line; (exit code, captured output)."""
        proc = subprocess.Popen(
            self.ssh(self.shell(argv, then)),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
        )
        held: list[str] = []
        reader = threading.Thread(target=_pass_stderr, args=(proc.stderr, held), daemon=True)
        reader.start()
        out = b""
        try:
            if stdin is not None:  # a function that writes into the pipe (a tar stream)
                try:
                    stdin(proc.stdin)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the other side ended early: its exit code says why
            if capture:
                out = proc.stdout.read()
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            raise
        reader.join(5)
        if rc == 255:
            raise _ssh_problem(self.login, held)
        if rc == _MISSING:
            raise UserError.one(
                "--remote",
                f"no hpc-mm on {self.login} (looked for {self.hpc_mm!r} on the login shell's PATH)",
                "install it there (pip install hpc-mm), or name it: HPC_MM_REMOTE_HPC_MM or remote_hpc_mm: "
                "in ~/.config/hpc-mm/config.yaml",
            )
        if rc == _NO_DIR:
            raise UserError.one(
                "--remote",
                f"cannot use the folder {self.directory} on {self.login}",
                "set HPC_MM_REMOTE_DIR (or remote_dir:) to a folder you may write there",
            )
        return rc, out.decode(errors="replace")


def _control_folder() -> Path:
    """The folder of the shared connection's socket: ours alone (made 0700; one another user made, or
    one others may write, would let them take over the connection)."""
    control = Path(tempfile.gettempdir()) / f"hpc-mm-ssh-{os.getuid()}"
    try:
        control.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(control)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UserError.one(
            "--remote",
            f"{control} is not a folder of yours that only you may use (owner {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):o})",
            f"remove it (rm -r {control}); hpc-mm makes it again, mode 700",
        )
    return control


def _pass_stderr(stream, held: list[str]) -> None:
    """The remote side's error output, line by line as it comes; ssh's own lines kept for a verdict."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        if _is_ssh_line(line):
            held.append(line.strip())
            continue
        sys.stderr.write(line)
        sys.stderr.flush()


def _is_ssh_line(line: str) -> bool:
    return bool(
        re.match(r"^(ssh|kex_exchange_identification|Connection (closed|reset)|Warning: Permanently)", line)
        or re.search(r"Permission denied \(|Host key verification failed|Could not resolve hostname", line)
    )


def _ssh_problem(login: str, said: list[str]) -> UserError:
    text = " ".join(s for s in said if not s.startswith("Warning: Permanently")) or "ssh failed"
    if "Permission denied" in text:
        return UserError.one(
            "--remote",
            f"{login} refused the key ({text})",
            "load your key (ssh-add) or copy it there (ssh-copy-id); hpc-mm never asks for a password",
        )
    if "Host key verification failed" in text:
        return UserError.one(
            "--remote", f"{login}'s host key is not known or changed", f"connect once with `ssh {login}` and check it"
        )
    return UserError.one(
        "--remote", f"cannot reach {login}: {text}", "check the name (your ~/.ssh/config Host, or user@host)"
    )


def _config() -> dict:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "hpc-mm" / "config.yaml"
    if not path.is_file():
        return {}
    value = yamlfile.read_small_yaml(path, "a YAML mapping: remote: LOGIN")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError.one(str(path), "is not a mapping", "e.g. remote: login1.cluster.org")
    return value


# ------------------------------------------------------------------ commands
def strip_remote(argv: list[str], command: str) -> list[str]:
    """argv without --remote LOGIN / --remote=LOGIN, which come before the command."""
    out, skip = [], False
    for at, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--remote":
            skip = True
        elif arg == command:
            return out + argv[at:]
        elif not arg.startswith("--remote="):
            out.append(arg)
    return out


def run_remote(remote: Remote, args, argv: list[str], load) -> int:
    """The command `args.command` on the login node; argv as given here, without --remote."""
    argv = strip_remote(argv, args.command)
    if args.command == "submit":
        return _submit(remote, args, argv, load)
    if args.command == "report":
        return _report(remote, argv)
    rc, _ = remote.run(argv)
    return rc


def _submit(remote: Remote, args, argv: list[str], load) -> int:
    if getattr(args, "template_dir", None):
        raise UserError.one(
            "--template-dir", "is not sent to the login node", "put the templates there and submit there"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staged, files = [], {}
    for i, job in enumerate(args.jobs):
        token = yamlfile.ELSEWHERE.set(True)  # a file the job names that is not here: the cluster's own
        try:
            spec = load(job, [])  # checked here first: every problem before anything crosses the network
        finally:
            yamlfile.ELSEWHERE.reset(token)
        folder = f"staged/{spec.name}-{stamp}-{os.getpid()}-{i}"
        text, copies = staging.staged_job(spec, folder)
        files.update(copies)
        files[f"{folder}/job.yaml"] = text.encode()
        staged.append(f"{folder}/job.yaml")
    total = staging.check_size(files)
    print(f"hpc-mm: sending {len(files)} file(s), {total / 1e6:.1f} MB, to {remote.login}", file=sys.stderr)
    rc, _ = remote.run([], stdin=lambda pipe: staging.write_tar(files, pipe), then="tar -xf - ")
    if rc:
        raise UserError.one(
            "--remote", f"copying the job to {remote.login} failed (tar exit {rc})", "check the disk there"
        )
    return remote.run(["submit", *staged, *staging.passed_on(args)])[0]


def _report(remote: Remote, argv: list[str]) -> int:
    rc, out = remote.run(argv, capture=True)
    sys.stdout.write(out)
    figures = re.findall(r"^figure\s+(\S.*)$", out, re.M)
    for figure in figures:
        local = Path.cwd() / f"{Path(figure).parent.name}-report.png"
        local.write_bytes(_fetch(remote, figure))
        print(f"figure (copied here) {local}")
    return rc


def _fetch(remote: Remote, path: str) -> bytes:
    result = subprocess.run(remote.ssh(remote.shell([], then=f"exec cat {shlex.quote(path)}")), capture_output=True)
    if result.returncode:
        raise UserError.one("--remote", f"cannot copy {path} from {remote.login}", "run report on the login node")
    return result.stdout
