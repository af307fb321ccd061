"""The login-node path (validate, args, render, submit --dry-run, status) never imports torch or megatron."""

import subprocess
import sys

from conftest import JOBS

PROBE = """
import sys, io, contextlib
from hpc_mm.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    assert rc == 0, (argv, rc)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'torch_npu', 'mindspeed', 'mpi4py'))
print('HEAVY', heavy)
"""


def test_cli_login_path_stays_light(tmp_path):
    tiny, qwen = str(JOBS / "tiny-vlm.yaml"), str(JOBS / "qwen2vl-7b.yaml")
    argvs = [
        ["validate", tiny, qwen],
        ["args", tiny],
        ["args", qwen],
        ["render", qwen, "--run-dir", str(tmp_path / "r1")],
        ["submit", tiny, "--dry-run", "--run-dir", str(tmp_path / "r2")],
        ["status", str(tmp_path / "r1")],
        ["status", str(tmp_path / "r1"), "--json"],
    ]
    out = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_validate_checks_the_script_without_rendering_it(tmp_path):
    """validate refuses what render refuses (every check is in the script's context) without
    importing Jinja2, which costs a third of its time; render itself still renders."""
    probe = (
        "import sys\nfrom hpc_mm.cli import main\nrc = main(sys.argv[1:])\n"
        "print('JINJA', 'jinja2' in sys.modules, 'RC', rc)"
    )
    qwen = str(JOBS / "qwen2vl-7b.yaml")
    ok = subprocess.run([sys.executable, "-c", probe, "validate", qwen], capture_output=True, text=True)
    assert "JINJA False RC 0" in ok.stdout, ok.stdout + ok.stderr
    bad = ["--set", "slurm.account=a b"]  # an sbatch value the script would carry unquoted
    refused = subprocess.run([sys.executable, "-c", probe, "validate", qwen, *bad], capture_output=True, text=True)
    rendered = subprocess.run(
        [sys.executable, "-c", probe, "render", qwen, *bad, "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert "slurm.account" in refused.stderr and refused.stderr.strip() == rendered.stderr.strip(), (
        refused.stderr,
        rendered.stderr,
    )
    ok = subprocess.run(
        [sys.executable, "-c", probe, "render", qwen, "--run-dir", str(tmp_path / "ok")], capture_output=True, text=True
    )
    assert "JINJA True RC 0" in ok.stdout
