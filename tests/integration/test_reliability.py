"""Runtime reliability outside Slurm: checkpoints that cannot run code or lie, saves that survive
a full disk, one run per run directory, local stops that stop, resumes that say what changed."""

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hpc_mm.errors import UserError
from hpc_mm.run import checkpoints
from hpc_mm.run.rundir import read_events
from hpc_mm.train import checkpoint

from conftest import HPC_MM, JOBS, run_cli

ONE_PROC = ["--nodes", "1", "--nproc-per-node", "1", "--set", "entry.launcher=srun", "--set", "gpt.global_batch_size=4"]


class Planted:
    """A pickle that runs a shell command when loaded (what an attacker plants)."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def plant(save_dir: Path, iteration: int, canary: Path) -> None:
    path = checkpoints.checkpoint_file(save_dir, iteration)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        torch.save({"iteration": iteration, "model": Planted(canary)}, f)
    (save_dir / checkpoints.TRACKER).write_text(str(iteration))


def test_a_planted_pickle_never_runs(tmp_path):
    canary = tmp_path / "canary"
    plant(tmp_path / "ckpt", 10, canary)
    with pytest.raises(UserError, match="asks to run posix.system"):
        checkpoint.load_latest(tmp_path / "ckpt")
    result = run_cli(
        "launch",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        tmp_path / "run",
        *ONE_PROC,
        "--set",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
    )
    assert result.returncode != 0 and "asks to run posix.system" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not canary.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:  # what torch.load(weights_only=False) would have run
        pickle.dump(Planted(canary), f)
    assert not canary.exists()


def launch(run_dir, *extra, timeout=600):
    return run_cli("launch", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, *ONE_PROC, *extra, timeout=timeout)


def test_a_corrupt_final_checkpoint_is_rewritten(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "--set",
        "gpt.train_iters=20",
        "--set",
        "gpt.lr_warmup_iters=2",
        "--set",
        "checkpoint.save_interval=10",
        "--set",
        "checkpoint.keep_last=null",
    ]
    assert launch(run_dir, *args).returncode == 0
    ckpt = run_dir / "checkpoints"
    final = checkpoints.checkpoint_file(ckpt, 20)
    final.write_bytes(final.read_bytes()[:1000])  # a disk that lied: a truncated final checkpoint
    assert not checkpoints.verify(ckpt, 20).ok and checkpoints.latest_whole(ckpt) == 10
    result = launch(run_dir, *args)
    assert result.returncode == 0, result.stderr
    assert "checkpoint 20 is not whole" in result.stderr and "resuming from iteration 10" in result.stderr
    assert checkpoints.latest_iteration(ckpt) == 20 and checkpoints.verify(ckpt, 20, deep=True).ok
    assert checkpoint.safe_load(final)["iteration"] == 20
    saves = [e["iteration"] for e in read_events(run_dir) if e["event"] == "checkpoint"]
    assert saves == [10, 20, 20]  # the second run wrote 20 again


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (the test runs as root, as CI does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_one_save_and_not_the_next(small_disk):
    save_dir = small_disk / "ckpt"
    state = {"w": torch.zeros(256 * 1024)}  # 1 MiB
    checkpoint.save(save_dir, 1, state)
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (2 * 2**20 + 512 * 1024))  # leaves less than 1 MiB
    with pytest.raises(UserError) as err:
        checkpoint.save(save_dir, 2, state)
    line = str(err.value)
    assert line.startswith("checkpoint.dir: no space left to save iteration 2 in") and "MiB free" in line
    assert "checkpoint 1 stays the resume point" in line
    assert not list(save_dir.glob(".tmp.*")) and checkpoints.latest_iteration(save_dir) == 1
    assert checkpoint.load_latest(save_dir)[0] == 1
    filler.unlink()
    checkpoint.save(save_dir, 2, state)
    assert checkpoints.latest_iteration(save_dir) == 2 and checkpoints.verify(save_dir, 2, deep=True).ok


def test_a_dead_writers_leftovers_are_cleaned_before_the_next_save(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".tmp.iter_0000005.{os.uname().nodename}.{dead.pid}"
    (leftover / "mp_rank_00").mkdir(parents=True)
    (leftover / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"\0" * 1000)
    checkpoint.save(tmp_path, 6, {"w": torch.zeros(3)})
    assert not leftover.exists() and checkpoints.latest_iteration(tmp_path) == 6


def test_one_run_directory_one_run(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [
            *HPC_MM,
            "launch",
            str(JOBS / "tiny-vlm.yaml"),
            "--run-dir",
            str(run_dir),
            *ONE_PROC,
            "--set",
            "gpt.train_iters=100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(e["event"] == "started" for e in read_events(run_dir)):
            time.sleep(0.2)
        second = launch(run_dir, "--set", "gpt.train_iters=100")
        assert second.returncode == 2 and f"{run_dir} is in use by another run (pid {first.pid}" in second.stderr
        local = run_cli("local", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir)
        assert local.returncode == 2 and "is in use by" in local.stderr
        render = run_cli("render", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir)
        assert render.returncode == 2 and "is in use by a running run" in render.stderr
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    again = launch(run_dir, "--set", "gpt.train_iters=100", "--set", "gpt.extra={override_opt_param_scheduler: true}")
    assert again.returncode == 0, again.stderr  # free again once it ended


def test_a_folder_of_the_users_is_never_written_over(tmp_path):
    mine = tmp_path / "my-job"
    mine.mkdir()
    (mine / "job.yaml").write_text("name: mine\n")
    for command in (["render"], ["local"], ["launch", *ONE_PROC]):
        result = run_cli(command[0], JOBS / "tiny-vlm.yaml", "--run-dir", mine, *command[1:])
        assert result.returncode == 2 and "holds files and is not a run directory" in result.stderr, result.stderr
    assert (mine / "job.yaml").read_text() == "name: mine\n" and sorted(os.listdir(mine)) == ["job.yaml"]


def processes_of(run_dir: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in text:
            found.append(text)
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_local_stops_stop(tmp_path, stop):
    run_dir = tmp_path / "run"
    tmp_before = {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("torchelastic_", "ompi."))}
    proc = subprocess.Popen(
        [*HPC_MM, "local", str(JOBS / "tiny-vlm.yaml"), "--run-dir", str(run_dir), "--set", "gpt.train_iters=100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=30)  # everything ends within 30 s
    assert f"stopped by {stop.name}" in out, out
    record = read_events(run_dir)
    assert record[-1]["event"] == "stopped" and record[-1]["name"] == stop.name
    saved = [e for e in record if e["event"] == "checkpoint" and e["reason"] == "signal"]
    assert saved and checkpoints.latest_iteration(run_dir / "checkpoints") == saved[-1]["iteration"]
    time.sleep(1)
    assert not processes_of(run_dir), processes_of(run_dir)
    tmp_after = {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("torchelastic_", "ompi."))}
    assert not tmp_after - tmp_before  # no leftovers from torchrun or Open MPI
    for name in ("job.yaml", "run.json"):
        assert not (run_dir / name).stat().st_mode & 0o004  # the job's environment is not world-readable


def test_a_resume_that_changes_the_schedule_says_what_wins(tmp_path):
    run_dir = tmp_path / "run"
    base = ["--set", "gpt.train_iters=10", "--set", "gpt.lr_warmup_iters=2", "--set", "checkpoint.save_interval=5"]
    assert launch(run_dir, *base).returncode == 0
    changed = launch(run_dir, *base[:-2], "--set", "gpt.train_iters=20", "--set", "gpt.lr=1.0e-3")
    assert (
        changed.returncode == 2
        and "error: gpt: the learning-rate schedule changed since the checkpoint" in changed.stderr
    )
    assert "gpt.lr: 0.002 -> 0.001" in changed.stderr and "override_opt_param_scheduler" in changed.stderr
    override = launch(
        run_dir,
        *base[:-2],
        "--set",
        "gpt.train_iters=20",
        "--set",
        "gpt.lr=1.0e-3",
        "--set",
        "gpt.extra={override_opt_param_scheduler: true}",
    )
    assert override.returncode == 0 and "the job's values win: gpt.lr: 0.002 -> 0.001" in override.stdout
    assert checkpoints.latest_iteration(run_dir / "checkpoints") == 20
    done = launch(
        run_dir,
        *base[:-2],
        "--set",
        "gpt.train_iters=20",
        "--set",
        "gpt.lr=1.0e-3",
        "--set",
        "gpt.extra={override_opt_param_scheduler: true}",
    )
    assert done.returncode == 0 and "nothing left to train" in done.stdout


def test_a_model_that_changed_shape_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    assert launch(run_dir, "--set", "gpt.train_iters=5", "--set", "gpt.lr_warmup_iters=1").returncode == 0
    model = json.loads((JOBS / "tiny-vlm" / "model.json").read_text())
    model["text_decoder"]["hidden_size"] = 48
    (tmp_path / "model.json").write_text(json.dumps(model))
    result = launch(
        run_dir,
        "--set",
        "gpt.train_iters=10",
        "--set",
        "gpt.lr_warmup_iters=1",
        "--set",
        f"mm.model={tmp_path / 'model.json'}",
        "--set",
        "gpt.extra={override_opt_param_scheduler: true}",
    )
    assert result.returncode == 2 and "error: mm.model: the checkpoint at iteration 5" in result.stderr
    assert "was saved for another model" in result.stderr and "Traceback" not in result.stderr


def test_read_only_and_full_folders_are_refused_before_training(tmp_path, small_disk):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = launch(tmp_path / "run", "--set", f"checkpoint.dir={readonly}")
        assert result.returncode == 2 and f"error: checkpoint.dir: {readonly} is not writable" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)
    result = launch(tmp_path / "run2", "--set", f"checkpoint.dir={small_disk / 'ckpt'}")  # 4 MiB free
    assert result.returncode == 2 and "error: checkpoint.dir:" in result.stderr and "MiB free" in result.stderr


def test_ctrl_c_to_launch_saves_like_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    tmp_before = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("torchelastic_")}
    proc = subprocess.Popen(
        [
            *HPC_MM,
            "launch",
            str(JOBS / "tiny-vlm.yaml"),
            "--run-dir",
            str(run_dir),
            "--nodes",
            "1",
            "--nproc-per-node",
            "2",
            "--set",
            "gpt.train_iters=100000",
            "--set",
            "gpt.global_batch_size=16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    saved = [e for e in read_events(run_dir) if e["event"] == "checkpoint" and e["reason"] == "signal"]
    assert saved and checkpoints.latest_iteration(run_dir / "checkpoints") == saved[-1]["iteration"]
    assert {p.name for p in Path("/tmp").iterdir() if p.name.startswith("torchelastic_")} == tmp_before
