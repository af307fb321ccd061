"""`pip install .` (not only -e) works and carries the templates."""

import os
import subprocess
import sys

from conftest import JOBS, ROOT


def test_non_editable_install_renders(tmp_path):
    target = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "hpc_mm" / "templates" / "sbatch.sh.j2").is_file()
    assert (target / "hpc_mm" / "job" / "megatron_options-26.1.0.json").is_file()  # validate reads it
    out = subprocess.run(
        [sys.executable, "-m", "hpc_mm", "render", str(JOBS / "tiny-vlm.yaml"), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import hpc_mm; print(hpc_mm.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert probe.stdout.startswith(str(target))
