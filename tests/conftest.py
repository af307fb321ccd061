import contextlib
import io
import os
import shutil
import subprocess
import sys
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
    result = subprocess.run([*HPC_MM, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"hpc-mm {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def hostile_tmp(tmp_path):
    """A temp folder whose name has spaces and characters shells care about (but no quotes)."""
    path = tmp_path / "run dir (x) & more"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster must be up (scripts/slurm-testbed up, which the test command runs)."""
    if shutil.which("scontrol") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        raise RuntimeError("the Slurm test cluster is not running: run `scripts/slurm-testbed up` "
                           "(the README's test command does)")
    return True
