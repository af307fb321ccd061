import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
HPC_MM = [sys.executable, "-m", "hpc_mm"]


def cli_in_process(*argv) -> tuple[int, str, str]:
    """The real CLI in this process (argument parsing, commands, error printing): (exit code, stdout, stderr)."""
    from hpc_mm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def setting(path: str, value):
    """A change to a job-file dict: `path` (dotted) set to `value`, parents made as needed."""

    def change(job):
        node = job
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        return job

    return change


def run_cli(*args, cwd=None, env=None, timeout=600, check=False):
    """Run the real `hpc-mm` in a subprocess; return CompletedProcess with text output."""
    result = subprocess.run(
        [*HPC_MM, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"hpc-mm {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def hostile_tmp(tmp_path):
    """A temp folder whose name has spaces and characters shells care about (but no quotes)."""
    path = tmp_path / "run dir (x) & more"
    path.mkdir()
    return path


@dataclass(frozen=True)
class Cluster:
    """One of the test clusters scripts/slurm-testbed starts: its name, config and nodes."""

    name: str
    conf: str
    prefix: str

    @property
    def nodes(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, 5)]

    def slurmd(self, node: str) -> list[str]:
        """The command line that runs `node`'s slurmd (also what to look for to kill it)."""
        return ["/usr/sbin/slurmd", "-f", self.conf, "-N", node]


# One test cluster a test worker (pytest -n 2: gw0, gw1), so that the workers never share nodes,
# queues or job ids; one process (no -n) uses the first.
CLUSTERS = [Cluster("hpcmm", "/etc/slurm/slurm.conf", "n"), Cluster("hpcmm2", "/etc/slurm/hpcmm2/slurm.conf", "m")]


def worker_cluster() -> Cluster:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    there = [c for c in CLUSTERS if Path(c.conf).is_file()] or CLUSTERS[:1]
    return there[index % len(there)]


def pytest_configure(config):
    # Every Slurm command a test (and hpc-mm, and the jobs it submits) runs talks to this worker's cluster.
    os.environ["SLURM_CONF"] = worker_cluster().conf


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The test cluster must be up (scripts/slurm-testbed up, which the test command runs)."""
    if shutil.which("scontrol") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        raise RuntimeError(
            f"the Slurm test cluster {worker_cluster().name} is not running: run "
            "`HPC_MM_TESTBED_CLUSTERS=2 scripts/slurm-testbed up` (the README's test command does)"
        )
    return worker_cluster()


@pytest.fixture
def recorded_slurm(monkeypatch):
    """Slurm as the real test cluster answered (tests/recorded/): `recorded_slurm("running", ...)`
    puts those recorded jobs in play and returns the fake, which keeps the orders it was given."""
    from recorded.slurm import RecordedSlurm

    from hpc_mm.slurm import query

    def play(*scenarios, **options):
        fake = RecordedSlurm(*scenarios, **options)
        monkeypatch.setattr(query, "_run", fake)
        monkeypatch.setattr(query, "can_submit", lambda: True)
        return fake

    return play


@pytest.fixture(scope="session")
def recorded_commands(tmp_path_factory):
    """Slurm's commands as a recorded Slurm (tests/recorded/replay.py): a folder to put first on PATH."""
    from recorded.replay import COMMANDS

    folder = tmp_path_factory.mktemp("recorded-slurm")
    replay = ROOT / "tests" / "recorded" / "replay.py"
    for name in COMMANDS:
        path = folder / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{replay}" {name} "$@"\n')
        path.chmod(0o755)
    return folder


@pytest.fixture(autouse=True)
def hermetic_slurm(request, monkeypatch):
    """The unit tests are hermetic: whatever this machine has installed, the Slurm commands they find
    are the recorded ones, so a test takes the same path with and without Slurm and never reaches a
    cluster. (Integration tests get the real one.)"""
    if request.node.path.parent.name != "unit":
        return
    folder = request.getfixturevalue("recorded_commands")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")
    # where hpc-mm remembers the user's jobs (run/known.py): the test's own
    monkeypatch.setenv("XDG_STATE_HOME", str(request.getfixturevalue("tmp_path") / "state"))


@pytest.fixture(autouse=True)
def signal_dispositions():
    """`finish` ignores SIGTERM while it requeues (its process ends right after); run in-process by a
    test, that would leak into every process the test worker starts afterwards. Put them back."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        if handler is not None:
            signal.signal(s, handler)
