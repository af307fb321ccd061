"""The entry's code as submitted (run/snapshot.py): copied into the run once, uncommitted changes
included, what git does not track linked; a run directory with other code refused unless --new-code;
what --remote sends of a checkout; status and report name the commit."""

import json
import shutil
from pathlib import Path

import pytest
from checkouts import commit_new, git

from hpc_mm.cli import staging
from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout, snapshot
from hpc_mm.run.report import summary_text

from conftest import ROOT

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"


@pytest.fixture
def checkout(tmp_path):
    """A MindSpeed-MM-like checkout in a shell-hostile folder: the entry, a package, an ignored data
    folder and weights, a file left untracked."""
    top = tmp_path / "my code $HOME 'q'"
    (top / "mindspeed_mm").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "pretrain_vlm.py", top / "pretrain_vlm.py")
    (top / "mindspeed_mm" / "__init__.py").write_text("VERSION = 'one'\n")
    (top / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (top / "run.sh").chmod(0o755)
    (top / ".gitignore").write_text("data/\n*.safetensors\n")
    commit_new(top)
    (top / "data").mkdir()
    (top / "data" / "train.jsonl").write_text("{}\n")
    (top / "model.safetensors").write_text("weights")
    (top / "notes.txt").write_text("mine")
    return top


def job(checkout, *more):
    return load_job(STANDIN, [f'entry.workdir="{checkout}"', *more])


def test_the_code_as_submitted_runs_every_start(checkout, tmp_path, capsys):
    (checkout / "mindspeed_mm" / "__init__.py").write_text("VERSION = 'one, edited'\n")  # uncommitted
    run_dir = tmp_path / "run"
    layout.create(layout.plan_run(job(checkout), run_dir))
    code = snapshot.recorded(run_dir)
    assert code.commit == git(checkout, "rev-parse", "HEAD") and code.dirty
    assert code.changed == ("mindspeed_mm/__init__.py",) and code.source == str(checkout)
    copy = code.folder(run_dir)
    recorded = load_job(run_dir / layout.JOB_FILE)
    assert recorded.entry.workdir == str(copy)
    assert (copy / "mindspeed_mm" / "__init__.py").read_text() == "VERSION = 'one, edited'\n"
    assert (copy / "run.sh").stat().st_mode & 0o100
    # what git does not track is linked to the checkout, where the entry always found it
    assert (copy / "data").is_symlink() and (copy / "data" / "train.jsonl").read_text() == "{}\n"
    assert (copy / "model.safetensors").resolve() == (checkout / "model.safetensors").resolve()
    assert "notes.txt" in capsys.readouterr().err  # untracked, not ignored: said
    # a dot-file is never copied (a secret tracked by mistake): linked, as what git does not track
    assert (copy / ".gitignore").is_symlink() and not any(p.is_file() and not p.is_symlink() for p in copy.rglob(".*"))
    # the checkout moves on; the run's copy does not
    (checkout / "mindspeed_mm" / "__init__.py").write_text("VERSION = 'two'\n")
    git(checkout, "commit", "-qam", "two")
    assert (copy / "mindspeed_mm" / "__init__.py").read_text() == "VERSION = 'one, edited'\n"


def test_a_tracked_secret_is_never_copied_into_the_run(checkout, tmp_path):
    (checkout / "configs").mkdir()
    (checkout / "configs" / ".env").write_text("TOKEN=s3cr3t-value")
    (checkout / "configs" / "model.json").write_text("{}")
    git(checkout, "add", "-f", "configs")
    git(checkout, "commit", "-qm", "a secret, tracked by mistake")
    run_dir = tmp_path / "run"
    layout.create(layout.plan_run(job(checkout), run_dir))
    copy = snapshot.recorded(run_dir).folder(run_dir)
    assert (copy / "configs" / "model.json").is_file() and (copy / "configs" / ".env").is_symlink()
    held = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink() and b"s3cr3t" in p.read_bytes()]
    assert held == []


def test_other_code_in_the_same_run_is_refused_unless_asked_for(checkout, tmp_path):
    run_dir = tmp_path / "run"
    layout.create(layout.plan_run(job(checkout), run_dir))
    layout.create(layout.plan_run(job(checkout), run_dir))  # the same code: fine
    first = snapshot.recorded(run_dir)
    (checkout / "mindspeed_mm" / "__init__.py").write_text("VERSION = 'two'\nEXTRA = 1\n")
    (checkout / "mindspeed_mm" / "new.py").write_text("x = 1\n")
    git(checkout, "add", "mindspeed_mm")
    git(checkout, "commit", "-qm", "two")
    with pytest.raises(UserError) as refused:
        layout.plan_run(job(checkout), run_dir)
    line = str(refused.value)
    assert line.startswith("entry.workdir: ") and first.commit[:12] in line and "--new-code" in line
    assert "1 changed, 1 added file(s), +2 -1 lines" in line, line
    created = layout.create(layout.plan_run(job(checkout), run_dir, new_code=True))
    second = snapshot.recorded(run_dir)
    assert second.commit != first.commit and not first.folder(run_dir).exists()
    assert (second.folder(run_dir) / "mindspeed_mm" / "new.py").is_file()
    created.undo()  # a submission Slurm refused takes its code record back
    assert snapshot.recorded(run_dir).commit == first.commit


@pytest.mark.parametrize("overrides", [["entry.snapshot=false"]])
def test_no_copy_when_turned_off_or_not_a_checkout(checkout, tmp_path, overrides):
    run_dir = tmp_path / "off"
    layout.create(layout.plan_run(job(checkout, *overrides), run_dir))
    assert snapshot.recorded(run_dir) is None and not (run_dir / snapshot.CODE).exists()
    plain = tmp_path / "plain"
    shutil.copytree(checkout, plain, ignore=shutil.ignore_patterns(".git"))
    layout.create(layout.plan_run(job(plain), tmp_path / "plain-run"))
    assert snapshot.recorded(tmp_path / "plain-run") is None
    builtin = load_job(ROOT / "jobs" / "tiny-vlm.yaml", [])
    assert not snapshot.applies(builtin)


def test_remote_sends_the_tracked_files_and_the_commit_and_the_login_node_snapshots_them(checkout, tmp_path):
    (checkout / ".env").write_text("TOKEN=secret")
    git(checkout, "add", "-f", ".env")
    git(checkout, "commit", "-qm", "a secret, tracked by mistake")
    spec = job(checkout)
    text, copies = staging.staged_job(spec, "stage")
    names = {k.removeprefix("stage/workdir/") for k in copies if k.startswith("stage/workdir/")}
    assert {"pretrain_vlm.py", "mindspeed_mm/__init__.py", "run.sh", snapshot.MARKER} <= names
    assert not {".env", ".gitignore", "notes.txt", "model.safetensors"} & names and not any("data/" in n for n in names)
    # the login node: the staged folder, as tar leaves it, submitted
    staged = tmp_path / "login"
    for name, source in copies.items():
        target = staged / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source if isinstance(source, bytes) else Path(source).read_bytes())
    remote_job = staged / "stage" / "job.yaml"
    remote_job.write_text(text)
    spec_there = load_job(remote_job, [])
    assert spec_there.entry.workdir == str(staged / "stage" / "workdir")
    run_dir = tmp_path / "remote-run"
    layout.create(layout.plan_run(spec_there, run_dir))
    code = snapshot.recorded(run_dir)
    assert code.commit == git(checkout, "rev-parse", "HEAD") and code.origin == str(checkout)
    assert not (code.folder(run_dir) / snapshot.MARKER).exists()


def test_status_and_report_name_the_commit(checkout, tmp_path):
    run_dir = tmp_path / "run"
    (checkout / "run.sh").write_text("#!/bin/sh\necho changed\n")
    layout.create(layout.plan_run(job(checkout), run_dir))
    code = snapshot.recorded(run_dir)
    line = snapshot.describe(code)
    assert line.startswith(f"{code.commit[:12]} (with uncommitted changes): run.sh from {checkout}")
    said = snapshot.describe(None, {"workdir_commit": "a" * 40, "workdir_dirty": False})
    assert said == "aaaaaaaaaaaa: the checkout at the last start (not copied)"
    info = {
        "iterations": 1, "train_iters": 2, "first_loss": 1.0, "final_loss": 0.5, "samples_per_second": None,
        "checkpoints": [], "restarts": [], "lost_iterations": 0, "step_seconds": None, "goodput": None, "code": line,
    }  # fmt: skip
    assert f"code          {line}" in summary_text(info)
    assert json.loads((run_dir / snapshot.CODE_FILE).read_text())["commit"] == code.commit
