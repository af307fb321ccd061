"""MindSpeed-MM 26's entries on the real test cluster: the FSDP2 trainer (its stand-in,
tests/fixtures/msmm26/, faithful to 26.1.0's contract: YAML sections, log line, DCP checkpoints in
the tracker layout, `release` weights, no signal handling) fine-tuned from converted weights and
really preempted twice, without and with hpc-mm's save-on-signal adapter; a Megatron-argument
pretrain_sora.py and pretrain_transformers.py (its --fsdp2-config-path file) and an inference command,
each through submit."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from hpc_mm.run.rundir import read_events

from conftest import ROOT, run_cli
from test_faults import finished, until
from test_slurm import preempt

FIXTURES = ROOT / "tests" / "fixtures"
JOB = FIXTURES / "msmm26.yaml"
ITERS = 60  # save_interval 10 (the job file), 0.3 s an iteration


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Converted weights as MindSpeed-MM's converter leaves them: release/ and a "release" tracker."""
    folder = tmp_path_factory.mktemp("weights") / "converted"
    subprocess.run(
        [sys.executable, str(FIXTURES / "msmm26" / "make_release.py"), str(folder)], check=True, capture_output=True
    )
    return folder


@pytest.fixture(scope="module")
def baseline(pretrained, tmp_path_factory):
    """The same job, never interrupted (emulated on this machine: the same 2 ranks, the same gloo)."""
    run = tmp_path_factory.mktemp("baseline") / "run"
    result = run_cli(
        "local",
        JOB,
        "--run-dir",
        run,
        "--set",
        f"checkpoint.pretrained={pretrained}",
        "--set",
        "env.STANDIN_STEP_SECONDS=0",
        check=True,
    )
    assert "iterations    60 of 60" in result.stdout, result.stdout
    return state(run, ITERS)


def state(run: Path, iteration: int) -> dict:
    """Every tensor and number of a DCP checkpoint (model, optimizer), by name."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "state.pt"
        dcp_to_torch_save(run / "checkpoints" / f"iter_{iteration:07d}", target)
        loaded = torch.load(target, weights_only=False)

    def flat(value, prefix=""):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from flat(inner, f"{prefix}/{key}")
        else:
            yield prefix, value

    return dict(flat(loaded))


def equal(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def submit(run: Path, *sets: str) -> str:
    args = [a for s in ("slurm.partition=low", *sets) for a in ("--set", s)]
    result = run_cli("submit", JOB, "--run-dir", run, "--json", *args, check=True)
    return json.loads(result.stdout)["job_id"]


def reached(run: Path) -> int:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return rows[-1]["iteration"] if rows else 0


def started(run: Path, restart: int) -> bool:
    return any(e["event"] == "started" and e["restart"] == restart for e in read_events(run))


def preempt_at(run: Path, job_id: str, iteration: int, restart: int) -> dict:
    """Wait for `iteration` in start `restart`, preempt every node, and wait for the requeue."""
    until(lambda: started(run, restart) and reached(run) >= iteration, timeout=240, job_id=job_id)
    high = preempt(hold=2)
    requeued = until(
        lambda: next((e for e in read_events(run) if e["event"] == "requeued" and e["restart"] == restart), None),
        timeout=240,
    )
    assert finished(high) == "COMPLETED"
    return requeued


def test_fsdp2_trainer_preempted_twice_loses_only_what_it_had_not_saved(slurm_cluster, pretrained, baseline, tmp_path):
    run = tmp_path / "run"
    job_id = submit(run, f"checkpoint.pretrained={pretrained}")
    first = preempt_at(run, job_id, 11, restart=0)  # just after a save: the signal comes before the next
    second = preempt_at(run, job_id, 31, restart=1)
    assert finished(job_id) == "COMPLETED", read_events(run)[-3:]

    record = read_events(run)
    for requeue, stopped_after in ((first, 11), (second, 31)):
        # the trainer cannot save on a signal: it resumes from its last periodic save, and what it
        # had trained since (it was stopped after iteration 11, then 31) is recorded as lost
        assert requeue["cause"] == "preemption" and requeue["iteration"] % 10 == 0
        exited = next(e for e in record if e["event"] == "exited" and e["restart"] == requeue["restart"])
        assert exited["reached"] >= stopped_after and exited["checkpoint"] == requeue["iteration"]
        assert requeue["lost_iterations"] == exited["reached"] - requeue["iteration"] >= 0
    resumed = [e for e in record if e["event"] == "resumed"]
    assert [(e["restart"], e["source"]) for e in resumed] == [(0, "pretrained"), (1, "run"), (2, "run")]
    assert [e["iteration"] for e in resumed] == [0, first["iteration"], second["iteration"]]
    assert not [e for e in record if e["event"] == "checkpoint" and e.get("reason") == "signal"]
    lost = first["lost_iterations"] + second["lost_iterations"]
    assert lost > 0  # (each preemption came within 9 iterations of a save: at 0.3 s an iteration)

    report = run_cli("report", run, check=True).stdout
    assert f"lost          {lost} iterations" in report, report
    status = json.loads(run_cli("status", run, "--json", check=True).stdout)
    assert status["lost_iterations"] == lost and [s["lost"] for s in status["starts"]][:2] == [
        first["lost_iterations"],
        second["lost_iterations"],
    ]
    # the trainer read hpc-mm's YAML: the run's own checkpoints once it had one
    trainer_yaml = (run / "config" / "trainer.yaml").read_text()
    assert f"load: {run / 'checkpoints'}" in trainer_yaml and "save_interval: 10" in trainer_yaml
    assert equal(state(run, ITERS), baseline)


def test_fsdp2_trainer_with_the_adapter_loses_nothing(slurm_cluster, pretrained, baseline, tmp_path):
    run = tmp_path / "run"
    job_id = submit(run, f"checkpoint.pretrained={pretrained}", "entry.save_on_signal=true")
    requeued = preempt_at(run, job_id, 14, restart=0)
    assert finished(job_id) == "COMPLETED", read_events(run)[-3:]
    assert requeued["lost_iterations"] == 0, requeued
    saved = [e for e in read_events(run) if e["event"] == "checkpoint" and e["restart"] == 0]
    # saved where it stopped, by the adapter on the signal (a stop that lands on an interval's iteration,
    # 20, is saved there all the same: the last save of the start is the signal's, at its iteration)
    assert saved[-1]["reason"] == "signal" and saved[-1]["iteration"] == requeued["iteration"] >= 14
    assert "lost          0 iterations" in run_cli("report", run, check=True).stdout
    assert equal(state(run, ITERS), baseline)


def test_sora_transformers_and_inference_entries_through_submit(slurm_cluster, tmp_path):
    settings = tmp_path / "fsdp2_config.yaml"
    settings.write_text("sharding_size: auto\nrecompute_modules: [predictor.blocks]\n")
    out = tmp_path / "generated.json"
    common = ["slurm.nodes=1", "distributed.nproc_per_node=2", "gpt.train_iters=20", "checkpoint.save_interval=10"]
    jobs = {
        "sora": (
            FIXTURES / "standin.yaml",
            ["entry.script=pretrain_sora.py", f"mm.model={FIXTURES / 'standin-sora' / 'model.json'}", *common],
        ),
        "transformers": (
            FIXTURES / "standin.yaml",
            ["entry.script=pretrain_transformers.py", f"entry.config={settings}", *common],
        ),
    }
    submitted = {}
    for name, (job, sets) in jobs.items():
        args = [a for s in sets for a in ("--set", s)]
        result = run_cli("submit", job, "--run-dir", tmp_path / name, "--json", *args, check=True)
        submitted[name] = json.loads(result.stdout)["job_id"]
    inference = tmp_path / "inference.yaml"
    inference.write_text(
        "name: infer\n"
        f"entry:\n  script: inference_sora.py\n  workdir: {FIXTURES}\n"
        f"  extra_args: [--prompt, a cat on a skateboard, --out, {out}]\n"
        "slurm:\n  nodes: 2\n  time: '00:05:00'\n  cpus_per_task: 1\n"
        f"mm:\n  model: {FIXTURES / 'standin-sora' / 'model.json'}\n"
        "env:\n  OMP_NUM_THREADS: '1'\n"
    )
    result = run_cli("submit", inference, "--run-dir", tmp_path / "infer", "--json", check=True)
    submitted["infer"] = json.loads(result.stdout)["job_id"]

    for name, job_id in submitted.items():
        assert finished(job_id) == "COMPLETED", (name, read_events(tmp_path / name)[-3:])
    for name in ("sora", "transformers"):
        last = read_events(tmp_path / name)[-1]
        assert (last["event"], last["iteration"]) == ("completed", 20), last
    copied = tmp_path / "transformers" / "config" / "fsdp2_config.yaml"
    assert copied.read_text() == settings.read_text()
    logs = run_cli("logs", tmp_path / "transformers", "--rank", "0", check=True).stdout
    assert f"fsdp2 config {copied}: ['recompute_modules', 'sharding_size']" in logs
    generated = json.loads(out.read_text())
    assert generated["prompt"] == "a cat on a skateboard" and generated["world"] == 2
    assert generated["model"] == ["diffusion", "load_text_features", "load_video_features", "predictor", "task"]
    ended = read_events(tmp_path / "infer")
    assert [e["event"] for e in ended if e["event"] in ("completed", "requeued", "failed")] == ["completed"]
    assert not (tmp_path / "infer" / "checkpoints").exists() or not any((tmp_path / "infer" / "checkpoints").iterdir())
