"""A cluster user's week, on the real test cluster: the code that was submitted is the code every start
runs (a checkout changed and committed while the job waits, then preempted and requeued, then
restarted inside), shown by the entry's own output and by `status`; TensorBoard reads every start's
events as one run; a node the site drains while the job trains is left at the next checkpoint, the job
going on on its spare inside the same allocation (Slurm's Restarts stays 0), and so is a node whose
GPU turns sick while it trains."""

import json
import shutil
import subprocess

from checkouts import commit_new, git
from fake_devices import gpu_node
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_restart_inside import INSIDE, JOB, allocation, ends, slurm_restarts, started

from hpc_mm.run.rundir import read_events

from conftest import ROOT, run_cli
from test_faults import metrics_rows, submit, until
from test_slurm import preempt_and_resume, wait_for

STANDIN = ROOT / "tests" / "fixtures" / "standin.yaml"
SECRET = "hf_7e1b0c2d9a4f4e8b"


def checkout(tmp_path):
    """The user's MindSpeed-MM checkout: the entry, and a VERSION the entry prints."""
    top = tmp_path / "MindSpeed-MM"
    top.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "pretrain_vlm.py", top / "pretrain_vlm.py")
    (top / "VERSION").write_text("one\n")
    (top / ".env").write_text(f"HF_TOKEN={SECRET}\n")  # tracked by mistake: never copied into a run
    return commit_new(top)


def test_the_submitted_code_runs_every_start_and_tensorboard_reads_one_run(slurm_cluster, tmp_path):
    top = checkout(tmp_path)
    submitted = git(top, "rev-parse", "HEAD")
    data = tmp_path / "data.json"  # the stand-in's data, crashing once at iteration 150 (a restart inside)
    spec = json.loads((ROOT / "tests" / "fixtures" / "standin" / "data.json").read_text())
    spec["dataset_param"].update(crash_at_iteration=150, crash_once_marker=str(tmp_path / "crashed"))
    data.write_text(json.dumps(spec))
    run_dir = tmp_path / "run"
    sets = [f"entry.workdir={top}", f"mm.data={data}", "slurm.partition=low", "checkpoint.save_interval=100"]
    sets += ["requeue.on_failure=2", "slurm.exclusive=true"]
    result = run_cli(
        "submit", STANDIN, "--run-dir", run_dir, "--json", *[a for s in sets for a in ("--set", s)], check=True
    )
    job_id = json.loads(result.stdout)["job_id"]
    until(lambda: metrics_rows(run_dir) >= 20)
    (top / "VERSION").write_text("two\n")  # the user moves on while the job runs
    git(top, "commit", "-qam", "two")
    preempt_and_resume(job_id, run_dir)
    assert wait_for(job_id, timeout=600) == "COMPLETED", [e["event"] for e in read_events(run_dir)]

    record = read_events(run_dir)
    kinds = [(e["event"], e.get("cause")) for e in record if e["event"] in ("requeued", "restarted", "completed")]
    assert kinds[0][0] == "requeued" and ("restarted", "crash") in kinds and kinds[-1][0] == "completed", kinds
    starts = [e for e in record if e["event"] == "started"]
    assert len(starts) == 3 and {s["workdir_commit"] for s in starts} == {submitted}
    for restart in range(3):  # the entry's own word on which code it ran, at every start
        said = run_cli("logs", run_dir, "--restart", str(restart), check=True).stdout
        assert "code version: one" in said and "code version: two" not in said, restart
    status = json.loads(run_cli("status", run_dir, "--json", check=True).stdout)
    assert status["code"]["commit"] == submitted and status["code"]["dirty"] is False
    assert f"code: {submitted[:12]} from {top}" in run_cli("status", run_dir, check=True).stdout

    # every start's TensorBoard events in the run, read by TensorBoard as one run: each step once, the
    # last start's value where a start repeated steps after its checkpoint
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    loss = board.Scalars("lm loss")
    assert [e.step for e in loss] == list(range(1, 301))
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        last[row["iteration"]] = row["loss"]
    assert all(abs(e.value - last[e.step]) <= 1e-6 * max(1.0, abs(last[e.step])) for e in loss)
    assert "tensorboard   " in run_cli("report", run_dir, check=True).stdout

    # the same run directory with other code: refused, with the difference's size, unless asked for
    again = run_cli("submit", STANDIN, "--run-dir", run_dir, *[a for s in sets for a in ("--set", s)], "--dry-run")
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "1 changed file(s), +1 -1 lines" in again.stderr and "--new-code" in again.stderr

    # the tracked .env's token is nowhere in the run directory: not in the code kept (linked there,
    # not copied), the logs or the records
    assert (run_dir / "code").is_dir()
    written = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert written and not [p for p in written if SECRET.encode() in p.read_bytes()]


def leaving(run_dir, count):
    found = [e for e in read_events(run_dir) if e["event"] == "leaving"]
    return found[count - 1] if len(found) >= count else None


def test_nodes_drained_or_with_a_sick_device_are_left_at_the_next_checkpoint(slurm_cluster, tmp_path):
    """Two nodes held spare; every node a (fake) healthy GPU. The site drains a training node: the job
    leaves it at the next checkpoint and goes on on a spare; then a training node's GPU starts counting
    uncorrectable ECC errors: left at the next checkpoint too, on the other spare. Nothing lost, no requeue."""
    root = tmp_path / "devices"
    for node in slurm_cluster.nodes:
        gpu_node(root, node, devices=1)
    run_dir = tmp_path / "run"
    devices = (
        "distributed.device=cuda", "distributed.backend=gloo",
        f"env={{HPC_MM_DEVICE_ROOT: '{root}/{{node}}', OMP_NUM_THREADS: '1'}}",
    )  # fmt: skip
    job_id = submit(
        run_dir, *JOB, *INSIDE, "slurm.spare_nodes=2", "gpt.train_iters=300", "checkpoint.save_interval=40", *devices
    )
    until(lambda: metrics_rows(run_dir) >= 10)
    nodes = allocation(job_id)
    first = started(run_dir, 0)
    assert len(nodes) == 4 and len(first["hosts"]) == 2
    drained = first["hosts"][1]
    checkpoint = until(lambda: [e for e in read_events(run_dir) if e["event"] == "checkpoint"] or None, timeout=120)
    subprocess.run(
        ["scontrol", "update", f"nodename={drained}", "state=drain", "reason=hpc-mm test: the site drains it"],
        check=True,
    )
    try:
        left = until(lambda: leaving(run_dir, 1), timeout=180)
        assert (left["nodes"], left["cause"]) == ([drained], "drain") and "DRAIN" in left["reason"]
        assert left["iteration"] >= checkpoint[-1]["iteration"]  # the next checkpoint after the drain
        end = until(lambda: (ends(run_dir) or [None])[0], timeout=120)
        assert (end["event"], end["cause"], end["exclude"]) == ("restarted", "drain", [drained]), end
        second = until(lambda: started(run_dir, 1), timeout=180)
        # (Slurm picks the step's nodes among the allocation's others: the survivor, or both spares)
        assert drained not in second["hosts"] and len(second["hosts"]) == 2 and set(second["hosts"]) <= set(nodes)
        assert second["checkpoint"] == left["iteration"]  # it goes on from the checkpoint it left at
        # a GPU of a training node turns sick while it trains
        sick = second["hosts"][1]
        gpu_node(root, sick, devices=1, uncorrected={0: 3})
        told = until(lambda: leaving(run_dir, 2), timeout=180)
        assert (told["nodes"], told["cause"]) == ([sick], "device"), told
        assert told["evidence"] == [f"{sick}: GPU 0: nvidia-smi: 3 uncorrectable ECC errors"]
        again = until(lambda: ends(run_dir)[1] if len(ends(run_dir)) > 1 else None, timeout=120)
        assert (again["event"], again["cause"], again["exclude"]) == ("restarted", "device", sorted([drained, sick]))
        third = until(lambda: started(run_dir, 2), timeout=180)
        assert not {drained, sick} & set(third["hosts"]) and third["checkpoint"] == told["iteration"]
        assert wait_for(job_id, timeout=600) == "COMPLETED", [e["event"] for e in read_events(run_dir)]
    finally:
        subprocess.run(["scontrol", "update", f"nodename={drained}", "state=resume"], capture_output=True)
    assert slurm_restarts(job_id) == 0 and not any(e["event"] == "requeued" for e in read_events(run_dir))
    # (squeue says COMPLETING while the nodes' epilogs run, after sacct says COMPLETED)
    status = until(lambda: (s := json.loads(run_cli("status", run_dir, "--json", check=True).stdout))["state"]
                   == "COMPLETED" and s, timeout=120)  # fmt: skip
    assert status["last_iteration"] == 300 and status["restarts"] == 2
    assert [s["why"] for s in status["starts"]][:2] == ["drain", "device"]
