"""Resuming a run directory is checked before anything queues: what its last checkpoint says
(read without torch, from the built-in trainer's checkpoints and Megatron's) against the job file,
in the job file's units, with the words the entry uses on the nodes."""

import argparse
import pickle

import pytest
import torch

from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout, resume
from hpc_mm.train import checkpoint
from hpc_mm.train.optim import build_scheduler

from conftest import JOBS
from conftest import cli_in_process as cli


def scheduler_state(train_iters, gbs=32, lr=0.002, decay_iters=None):
    args = argparse.Namespace(
        lr=lr,
        min_lr=0.0001,
        lr_warmup_init=0.0,
        lr_warmup_iters=20,
        lr_decay_iters=decay_iters,
        lr_decay_style="cosine",
        weight_decay=0.01,
        train_iters=train_iters,
        lr_wsd_decay_iters=None,
        lr_wsd_decay_style="exponential",
        override_opt_param_scheduler=False,
        use_checkpoint_opt_param_scheduler=False,
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return build_scheduler(optimizer, args, gbs).state_dict()


def builtin_run(tmp_path, iteration, train_iters, **kw):
    """A run directory whose built-in trainer saved at `iteration` with train_iters `train_iters`."""
    spec = load_job(JOBS / "tiny-vlm.yaml", [f"gpt.train_iters={train_iters}"])
    run_dir = tmp_path / "run"
    layout.create(layout.plan_run(spec, run_dir))
    state = {
        "iteration": iteration,
        "consumed_samples": iteration * 32,
        "model": {"w": torch.ones(2)},
        "opt_param_scheduler": scheduler_state(train_iters, **kw),
        "data_parallel_size": 4,
        "args": {"global_batch_size": kw.get("gbs", 32), "train_iters": train_iters},
    }
    checkpoint.save(run_dir / "checkpoints", iteration, state)
    return run_dir


def test_a_resume_that_changes_train_iters_is_refused_at_submit_in_iterations(tmp_path):
    run_dir = builtin_run(tmp_path, 1500, 3000)
    rc, out, err = cli("validate", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "--set", "gpt.train_iters=4000")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: gpt: the learning-rate schedule changed since the checkpoint: ")
    assert "gpt.lr_decay_iters: 3000 -> 4000" in err and "gpt.train_iters: 3000 -> 4000" in err
    assert "override_opt_param_scheduler" in err  # the way out
    rc, out, err = cli(
        "submit", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "--set", "gpt.train_iters=4000", "--dry-run"
    )
    assert rc == 2 and "gpt.train_iters: 3000 -> 4000" in err
    rc, out, err = cli("validate", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "--set", "gpt.train_iters=3000")
    assert rc == 0, err  # the same job resumes


def test_what_wins_when_the_job_says(tmp_path):
    run_dir = builtin_run(tmp_path, 1500, 3000)
    rc, _, err = cli(
        "validate",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        run_dir,
        "--set",
        "gpt.train_iters=4000",
        "--set",
        "gpt.extra.override_opt_param_scheduler=true",
    )
    assert (
        rc == 0 and "warning: gpt: the learning-rate schedule changed since the checkpoint; the job's values win" in err
    )


def test_a_finished_run_resubmitted_unchanged_has_nothing_to_train(tmp_path):
    run_dir = builtin_run(tmp_path, 3000, 3000)
    rc, _, err = cli("validate", JOBS / "tiny-vlm.yaml", "--run-dir", run_dir, "--set", "gpt.train_iters=3000")
    assert (
        rc == 2 and "error: gpt.train_iters: the run's checkpoint is at iteration 3000 of 3000: nothing is left" in err
    )


def test_a_megatron_checkpoint_is_read_without_running_anything(tmp_path):
    """Megatron's own model_optim_rng.pt (args as an argparse.Namespace, the scheduler's state, tensors)
    is read without torch and without building anything but plain values."""
    folder = tmp_path / "ckpt" / "iter_0000100" / "mp_rank_00"
    folder.mkdir(parents=True)
    args = argparse.Namespace(global_batch_size=32, train_iters=3000, data_parallel_size=4, lr=0.002)
    torch.save(
        {
            "args": args,
            "iteration": 100,
            "opt_param_scheduler": scheduler_state(3000),
            "model": {"w": torch.ones(3)},
            "rng_state": [{"x": torch.get_rng_state()}],
        },
        folder / "model_optim_rng.pt",
    )
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("100")
    saved = resume.read(tmp_path / "ckpt")
    assert (saved.iteration, saved.global_batch_size, saved.data_parallel_size) == (100, 32, 4)
    assert resume.in_iterations(saved.scheduler, 32)["gpt.train_iters"] == 3000


class Canary:
    def __reduce__(self):
        return (open, ("/tmp/hpc-mm-resume-canary", "w"))


def test_a_planted_record_never_runs(tmp_path):
    import zipfile

    folder = tmp_path / "ckpt" / "iter_0000005" / "mp_rank_00"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "model_optim_rng.pt", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"opt_param_scheduler": {}, "x": Canary()}))
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("5")
    resume.read(tmp_path / "ckpt")
    from pathlib import Path

    assert not Path("/tmp/hpc-mm-resume-canary").exists()


@pytest.mark.parametrize(
    "saved,job,changed",
    [
        (
            {"gpt.lr": 0.002, "gpt.train_iters": 1500},
            {"gpt.lr": 0.002, "gpt.train_iters": 2000},
            ["gpt.train_iters: 1500 -> 2000"],
        ),
        (
            {"gpt.lr_decay_style": "cosine"},
            {"gpt.lr_decay_style": "linear"},
            ["gpt.lr_decay_style: 'cosine' -> 'linear'"],
        ),
        ({"gpt.lr": 0.002}, {"gpt.lr": 0.002}, []),
    ],
)
def test_changes_in_job_units(saved, job, changed):
    assert resume.changes(saved, job) == changed
