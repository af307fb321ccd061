"""Rendered sbatch scripts: golden files, bash -n, and inert hostile values."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.slurm.render import render_script

from conftest import JOBS, ROOT, cli_in_process, run_cli

GOLDEN = ROOT / "tests" / "golden"
GOLDEN_RUN_DIR = Path("/tmp/hpc-mm-golden/run")


# A site's Ascend cluster: aarch64 compute nodes with their own Python, containers through pyxis.
SITE = [
    "slurm.python=/opt/conda/envs/mm/bin/python",
    "slurm.srun_args=[--mpi=pmix, --container-image=/images/mm.sqsh]",
    "entry.wrapper=[apptainer, exec, /images/mm.sif]",
    "setup=[source /usr/local/Ascend/ascend-toolkit/set_env.sh, conda activate mm]",
]
GOLDEN_JOBS = {"tiny-vlm": ("tiny-vlm", []), "qwen2vl-7b": ("qwen2vl-7b", []), "qwen2vl-7b-site": ("qwen2vl-7b", SITE)}


@pytest.mark.parametrize("name", sorted(GOLDEN_JOBS))
def test_golden_scripts(name):
    job, overrides = GOLDEN_JOBS[name]
    spec = load_job(JOBS / f"{job}.yaml", overrides)
    text = render_script(spec, GOLDEN_RUN_DIR, python=None if spec.slurm.python else "python3")
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("HPC_MM_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered script differs from {golden} (HPC_MM_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("job", sorted(p.name for p in JOBS.glob("*.yaml")))
def test_bash_n_on_every_rendered_script(tmp_path, job):
    out = tmp_path / "job.sbatch"
    run_cli("render", JOBS / job, "--run-dir", tmp_path / "run", "-o", out, check=True)
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0


def test_sbatch_options():
    spec = load_job(JOBS / "qwen2vl-7b.yaml", ["slurm.extra_sbatch={mail-type: END, requeue: true}"])
    text = render_script(spec, GOLDEN_RUN_DIR, python="python3")
    for line in (
        "#SBATCH --gres=npu:8",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --mail-type=END",
        "#SBATCH --open-mode=append",
    ):
        assert line in text
    srun = load_job(JOBS / "tiny-vlm.yaml", ["entry.launcher=srun"])
    assert "#SBATCH --ntasks-per-node=2" in render_script(srun, GOLDEN_RUN_DIR, python="python3")


def test_unsafe_sbatch_values_are_refused():
    with pytest.raises(UserError, match="slurm.extra_sbatch.comment"):  # refused when the job is read
        load_job(JOBS / "tiny-vlm.yaml", ["slurm.extra_sbatch={comment: 'a\"; touch /tmp/x'}"])
    with pytest.raises(UserError, match="--run-dir"):
        render_script(load_job(JOBS / "tiny-vlm.yaml"), Path("/tmp/a$(touch x)"))


HOSTILE = [
    "$(touch {canary})",
    "`touch {canary}`",
    "x; touch {canary}",
    'it\'s "quoted"',
    "two words",
    "$HOME ${{PATH}}",
    "tab\there",
]


def test_injection_canary_never_runs(hostile_tmp):
    """Hostile env values and a hostile run dir path: run the script with a fake srun, no canary."""
    canary = hostile_tmp / "canary"
    job = yaml.safe_load((JOBS / "tiny-vlm.yaml").read_text())
    job["mm"] = {k: str(JOBS / v) for k, v in job["mm"].items()}
    job["env"] = {f"V{i}": v.format(canary=canary) for i, v in enumerate(HOSTILE)}
    job_file = hostile_tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run_dir = hostile_tmp / "run & $dir"
    with pytest.raises(UserError):  # '$' cannot go on an #SBATCH line: refused, not rendered
        render_script(load_job(job_file), run_dir)
    run_dir = hostile_tmp / "run (1) & co"
    script = hostile_tmp / "job.sbatch"
    script.write_text(render_script(load_job(job_file), run_dir, python="true"))
    bin_dir = hostile_tmp / "bin"
    bin_dir.mkdir()
    fake_srun = bin_dir / "srun"
    fake_srun.write_text(
        "#!/bin/bash\n"
        "env | grep '^V[0-9]=' > \"$HPC_MM_RUN_DIR/seen.env\"\n"
        'printf \'%s\\n\' "$@" > "$HPC_MM_RUN_DIR/srun.args"\n'
    )
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    run_dir.mkdir()
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert not canary.exists()
    seen = (run_dir / "seen.env").read_text()
    for i, value in enumerate(HOSTILE):
        assert f"V{i}={value.format(canary=canary)}\n" in seen
    assert str(run_dir) in (run_dir / "srun.args").read_text()  # the path arrived whole


def test_failed_render_leaves_nothing(tmp_path):
    result = run_cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", tmp_path / "run", "--template-dir", tmp_path)
    assert result.returncode == 2 and "no sbatch.sh.j2" in result.stderr
    assert not (tmp_path / "run").exists()
    result = run_cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", tmp_path / "bad$dir")
    assert result.returncode == 2 and not (tmp_path / "bad$dir").exists()


def test_render_keeps_the_script_in_the_run_directory(tmp_path):
    run_cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", tmp_path / "run", "-o", tmp_path / "out.sbatch", check=True)
    assert (tmp_path / "run" / "job.sbatch").read_text() == (tmp_path / "out.sbatch").read_text()
    assert (tmp_path / "run" / "job.yaml").is_file() and (tmp_path / "run" / "logs").is_dir()
    # The run reads copies of the mm files: a restart reads what the first start read.
    recorded = yaml.safe_load((tmp_path / "run" / "job.yaml").read_text())["mm"]
    for name in ("data", "model", "tool"):
        assert recorded[name] == str(tmp_path / "run" / "mm" / f"{name}.json")
        assert (tmp_path / "run" / "mm" / f"{name}.json").read_text() == (
            JOBS / "tiny-vlm" / f"{'tools' if name == 'tool' else name}.json"
        ).read_text()


def test_requeue_can_be_turned_off():
    spec = load_job(JOBS / "tiny-vlm.yaml", ["requeue.enabled=false"])
    text = render_script(spec, GOLDEN_RUN_DIR, python="python3")
    assert "#SBATCH --no-requeue" in text and "#SBATCH --requeue" not in text


def test_user_template_dir(tmp_path):
    spec = load_job(JOBS / "tiny-vlm.yaml")
    with pytest.raises(UserError, match="no sbatch.sh.j2"):
        render_script(spec, GOLDEN_RUN_DIR, template_dir=tmp_path)
    (tmp_path / "sbatch.sh.j2").write_text("#!/bin/bash\n#SBATCH --job-name={{ ctx.name }}\n{{ ctx.nope }}\n")
    with pytest.raises(UserError, match="unknown value"):
        render_script(spec, GOLDEN_RUN_DIR, template_dir=tmp_path)
    (tmp_path / "sbatch.sh.j2").write_text(
        "#!/bin/bash\n# site header\n{% for o in ctx.sbatch %}#SBATCH {{ o }}\n{% endfor %}"
    )
    assert "# site header\n#SBATCH --job-name=tiny-vlm\n" in render_script(spec, GOLDEN_RUN_DIR, template_dir=tmp_path)


def _newline_cases(canary):
    touch = f"touch {canary}"
    return [
        ("name", "name", "tiny\n"),
        ("slurm.partition", "slurm.partition", "low\n"),
        ("slurm.time", "slurm.time", "01:00:00\n"),
        ("slurm.gres", "slurm.gres", "npu:8\n"),
        ("extra-key", "slurm.extra_sbatch", {"comment\n": "x"}),
        ("extra-value", "slurm.extra_sbatch", {"comment": f"x\n#SBATCH --wrap={touch}"}),
        ("extra-hash", "slurm.extra_sbatch", {"comment": "a # the rest is a comment to sbatch"}),
        ("env-key", "env", {"X\n": "1"}),
        ("env-value", "env", {"X": f"a\n{touch}"}),
        ("master-addr", "distributed.master_addr", "n1\n"),
        ("entry-script", "entry.script", "pretrain_vlm.py\n"),
        ("setup-carriage-return", "setup", [f"echo ok\r{touch}"]),
        ("checkpoint-dir", "checkpoint.dir", "/tmp/x\n"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_trailing_newline_canaries_never_run(tmp_path, case):
    canary = tmp_path / "canary"
    cid, field, value = _newline_cases(canary)[case]
    job = yaml.safe_load((JOBS / "tiny-vlm.yaml").read_text())
    job["mm"] = {k: str(JOBS / v) for k, v in job["mm"].items()}
    section, _, key = field.partition(".")
    if key:
        job.setdefault(section, {})[key] = value
    else:
        job[section] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    for command in (["validate"], ["render", "--run-dir", tmp_path / "run"], ["submit", "--dry-run"]):
        result = run_cli(command[0], path, *command[1:])
        assert (
            result.returncode == 2 and result.stderr.startswith("error: ") and field.split(".")[0] in result.stderr
        ), (cid, result.stderr)
        assert "Traceback" not in result.stderr
    assert not canary.exists() and not (tmp_path / "run").exists()


def run_script(tmp_path, setup: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """Render the tiny job with these setup lines and run it with bash and a fake srun."""
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "render",
            JOBS / "tiny-vlm.yaml",
            "--run-dir",
            run_dir,
            "-o",
            tmp_path / "job.sbatch",
            "--set",
            f"setup={json.dumps(setup)}",
        ).returncode
        == 0
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\necho srun ran > "$HPC_MM_RUN_DIR/srun.ran"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(tmp_path / "job.sbatch")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "5"},
    )
    return result, run_dir


def test_setup_lines_run_in_a_tolerant_shell(tmp_path):
    result, run_dir = run_script(
        tmp_path, ['echo "unset reads are fine: ${HPC_MM_SURELY_UNSET_X}"', 'test -z "$HPC_MM_SURELY_UNSET_Y" || false']
    )
    assert (run_dir / "srun.ran").exists() and "unset reads are fine" in result.stdout, result.stdout + result.stderr
    # The fake step trained nothing: finish says so (exit 0 with training unfinished is no completion).
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "failed" and "training is unfinished" in last["reason"]


@pytest.mark.parametrize(
    "setup,code,words",
    [
        (["true", "false"], 1, "setup line 2 failed with exit code 1"),
        (["(exit 7)"], 7, "setup line 1 failed with exit code 7"),
        (["exit 3"], 3, "the batch script ended before the training step (exit code 3)"),
    ],
)
def test_a_failing_setup_line_is_a_recorded_failure(tmp_path, setup, code, words):
    result, run_dir = run_script(tmp_path, setup)
    assert result.returncode == code and not (run_dir / "srun.ran").exists()
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "failed" and last["reason"] == words and last["returncode"] == code


def test_a_stop_signal_while_the_script_starts_is_a_stop_not_a_failure(tmp_path):
    """`hpc-mm cancel` (or a preemption) may signal the batch shell before it reaches the step: bash's
    default for USR1 would end it (FAILED). The trap is set first; the step is not started; finish
    hears the stop."""
    import signal
    import subprocess
    import time

    calls = tmp_path / "calls"
    python = tmp_path / "python"  # stands for the nodes' interpreter running hpc-mm
    python.write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\ncase "$*" in *next-restart*) sleep 2; echo 0;; esac\nexit 0\n'
    )
    python.chmod(0o755)
    srun = tmp_path / "srun"
    srun.write_text(f'#!/bin/bash\necho "srun $*" >> {calls}\nexit 0\n')
    srun.chmod(0o755)
    run = tmp_path / "run"
    rc, _, err = cli_in_process(
        "render", JOBS / "tiny-vlm.yaml", "--run-dir", run, "--set", f"slurm.python={python}", "-o", os.devnull
    )
    assert rc == 0, err
    shell = subprocess.Popen(
        ["bash", str(run / "job.sbatch")],
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "7"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.7)  # inside next-restart, before the step
    shell.send_signal(signal.SIGUSR1)
    out, _ = shell.communicate(timeout=30)
    assert shell.returncode == 0, out
    said = calls.read_text()
    assert "finish" in said and "--signal USR1" in said, said
    assert " launch " not in said, said  # the training step never started


def test_render_to_a_device_writes_to_it_and_never_replaces_it(tmp_path):
    before = os.stat(os.devnull)
    rc, _, err = cli_in_process("render", JOBS / "tiny-vlm.yaml", "--run-dir", tmp_path / "run", "-o", os.devnull)
    assert rc == 0, err
    after = os.stat(os.devnull)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_mode == before.st_mode
    out = tmp_path / "job.sbatch"
    assert cli_in_process("render", JOBS / "tiny-vlm.yaml", "--run-dir", tmp_path / "run2", "-o", out)[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
