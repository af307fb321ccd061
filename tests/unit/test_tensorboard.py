"""TensorBoard events written and read without TensorBoard (run/tensorboard.py), checked against
TensorBoard's own reader; the run's folder given to Megatron entries; `hpc-mm tensorboard` serving
runs; the trackers' environment (one run across starts)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hpc_mm.job.entries import contract
from hpc_mm.job.entries.base import Paths
from hpc_mm.job.jobfile import load_job
from hpc_mm.run import layout, trackers
from hpc_mm.run import tensorboard as tb
from hpc_mm.run.records import Metric
from hpc_mm.run.rundir import RunDir

from conftest import JOBS, ROOT

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"


def rows(first, last, scale=1.0):
    return [
        Metric(i, loss=scale / i, lr=1e-3, time=1000.0 + i, samples_per_second=50.0) for i in range(first, last + 1)
    ]


def test_crc32c_and_a_record():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value
    assert tb.crc32c(b"") == 0


def test_starts_of_one_run_read_as_one_run_by_tensorboards_reader(tmp_path):
    folder = tmp_path / "tensorboard"
    tb.EventWriter(folder, "hpc-mm.1.r0").write(rows(1, 35))  # stopped at 35, checkpoint at 30
    time.sleep(0.01)
    tb.EventWriter(folder, "hpc-mm.2.r1", first_step=31).write(rows(31, 60, scale=2.0))  # resumed from 30
    acc = EventAccumulator(str(folder))
    acc.Reload()
    loss = acc.Scalars("loss")
    steps = [e.step for e in loss]
    assert steps == list(range(1, 61))  # each step once: the first start's 31..35 gave way to the second's
    assert loss[-1].value == pytest.approx(2.0 / 60) and loss[29].value == pytest.approx(1.0 / 30)
    assert {"loss", "learning-rate", "samples-per-second"} <= set(acc.Tags()["scalars"])
    ours = [s for f in tb.event_files(folder) for s in tb.read_scalars(f) if s[1] == "loss"]
    assert len(ours) == 65
    said = tb.describe(folder)
    assert said.startswith(f"{folder}: 2 event file(s), steps 1-60") and "loss" in said


def test_an_entry_writing_its_own_events_across_a_restart_reads_as_one_run(tmp_path):
    """Megatron's writer marks no restart: hpc-mm's mark, written before the entry starts, does."""
    from torch.utils.tensorboard import SummaryWriter

    def megatron(first, last, scale):
        writer = SummaryWriter(str(tmp_path))
        for step in range(first, last + 1):
            writer.add_scalar("lm loss", scale / step, step)
        writer.close()

    tb.EventWriter(tmp_path, "hpc-mm.1.r0", first_step=1)
    megatron(1, 35, 1.0)
    time.sleep(1.05)  # a restart takes longer than the second in the file names (SummaryWriter's: whole seconds)
    tb.EventWriter(tmp_path, "hpc-mm.1.r1", first_step=31)  # resumed from checkpoint 30
    megatron(31, 50, 2.0)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    loss = acc.Scalars("lm loss")
    assert [e.step for e in loss] == list(range(1, 51)) and loss[35].value == pytest.approx(2.0 / 36)


def test_our_reader_reads_what_torchs_summary_writer_writes(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 6):
        writer.add_scalar("lm loss", 1.0 / step, step)
    writer.close()
    found = [s for f in tb.event_files(tmp_path) for s in tb.read_scalars(f)]
    assert [(s, t) for s, t, _ in found] == [(i, "lm loss") for i in range(1, 6)]
    torn = tb.event_files(tmp_path)[0]
    torn.write_bytes(torn.read_bytes()[:-7])  # a writer killed mid-record
    assert len(tb.read_scalars(torn)) == 4


def test_megatron_entries_write_into_the_run_unless_the_job_names_a_folder(tmp_path):
    paths = Paths(tmp_path, tmp_path / "checkpoints", tensorboard_dir=layout.tensorboard_dir(tmp_path))
    spec = load_job(STANDIN, [])
    argv = contract(spec).argv(spec, paths, "gloo", 4, None)
    assert argv[argv.index("--tensorboard-dir") + 1] == str(tmp_path / "tensorboard")
    own = load_job(STANDIN, ["gpt.extra.tensorboard_dir=/data/tb"])
    argv = contract(own).argv(own, paths, "gloo", 4, None)
    assert argv.count("--tensorboard-dir") == 1 and argv[argv.index("--tensorboard-dir") + 1] == "/data/tb"
    builtin = load_job(JOBS / "tiny-vlm.yaml", [])
    assert "--tensorboard-dir" not in contract(builtin).argv(builtin, paths, "gloo", 2, None)
    assert (contract(spec).tensorboard(spec), contract(builtin).tensorboard(builtin)) == ("entry", "hpc-mm")


def test_trackers_see_every_start_of_a_run_as_one_run(tmp_path):
    run_dir = tmp_path / "standin-20261207-0700"
    layout.create(layout.plan_run(load_job(STANDIN, []), run_dir))
    created = RunDir(run_dir).info.created
    first, again = trackers.env(run_dir, created), trackers.env(run_dir, created)
    assert first == again and first["WANDB_RUN_ID"].startswith("standin-20261207-0700-")
    assert first["WANDB_RESUME"] == "allow" and first["WANDB_NAME"] == "standin-20261207-0700"
    other = trackers.env(tmp_path / "other", created)
    assert other["WANDB_RUN_ID"] != first["WANDB_RUN_ID"]
    from hpc_mm.launch.plan import job_env

    env = job_env({"WANDB_RUN_ID": "mine"}, load_job(STANDIN, []), run_dir)
    assert env["WANDB_RUN_ID"] == "mine" and env["HPC_MM_RUN_ID"] == first["HPC_MM_RUN_ID"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hpc_mm_tensorboard_serves_the_runs(tmp_path):
    runs = []
    for name in ("a-run", "b,run"):
        run_dir = tmp_path / name
        layout.create(layout.plan_run(load_job(JOBS / "tiny-vlm.yaml", []), run_dir))
        tb.EventWriter(layout.tensorboard_dir(run_dir), "hpc-mm.1.r0").write(rows(1, 5))
        runs.append(run_dir)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc_mm", "tensorboard", *map(str, runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, seen = time.time() + 60, None
        while time.time() < deadline and seen is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as answer:
                    found = [name.split("/")[0] for name in json.loads(answer.read())]  # "a-run/."
                    seen = found if len(found) == 2 else None
            except OSError:
                time.sleep(0.5)
        assert sorted(seen or []) == ["a-run", "b_run"], proc.stdout.read() if proc.poll() is not None else seen
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode is not None
    leftover = subprocess.run(["pgrep", "-f", f"tensorboard.main.*--port {port}"], capture_output=True, text=True)
    assert not leftover.stdout.strip(), "TensorBoard outlived hpc-mm tensorboard"


def test_hpc_mm_tensorboard_on_a_run_without_events_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    layout.create(layout.plan_run(load_job(JOBS / "tiny-vlm.yaml", []), run_dir))
    out = subprocess.run([sys.executable, "-m", "hpc_mm", "tensorboard", str(run_dir)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no TensorBoard events" in out.stderr
