"""What the hang watchdog counts as progress, for every entry kind: a real child process through the
launcher's own pump (run_forwarding_signals), Progress and Watchdog, with budgets of seconds.
An entry whose progress hpc-mm cannot read is judged by liveness only: a progress bar, verl's step
lines, silent work or touches of $HPC_MM_PROGRESS_FILE keep it alive; only a stopped or idle entry
is ended. An entry that logs iterations keeps today's phases."""

import os
import re
import signal
import sys
import textwrap
import threading
import time

import pytest

from hpc_mm.job.entries import CONTRACTS
from hpc_mm.launch import watchdog
from hpc_mm.launch.progress import Progress
from hpc_mm.launch.supervise import run_forwarding_signals
from hpc_mm.names import Watch
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir

from conftest import cli_in_process

BUDGET = 2.0  # seconds: every phase's
KEY = StartKey("31", 0)

# Each prints (or not) for about 3 budgets (0.2 s x 30), then ends 0; PROGRESS_FILE is the launcher's.
ENTRIES = {
    "tqdm bar (carriage returns, no line end)": """
        import sys, time
        for i in range(1, 31):
            sys.stderr.write(f"\\rsampling: {100 * i // 30:3d}%|####| {i}/30 [00:{i:02d}<00:10, 1.00it/s]")
            sys.stderr.flush()
            time.sleep(0.2)
        sys.stderr.write("\\n")
    """,
    "verl step lines": """
        import time
        for i in range(1, 31):
            print(f"step:{i} - actor/pg_loss:0.1 - critic/score/mean:0.5", flush=True)
            time.sleep(0.2)
    """,
    "sampling lines (an inference)": """
        import time
        for i in range(1, 31):
            print(f"sampling video {i}/30", flush=True)
            time.sleep(0.2)
    """,
    "silent work (CPU only)": """
        import time
        end = time.time() + 6
        while time.time() < end:
            sum(range(10000))
    """,
    "silent, touching the progress file": """
        import os, time
        for i in range(30):
            time.sleep(0.2)
            os.utime(os.environ["HPC_MM_PROGRESS_FILE"])
    """,
}


@pytest.fixture(autouse=True)
def quick_heartbeats(monkeypatch):
    monkeypatch.setattr(watchdog, "HEARTBEAT", 0.25)


def supervise(tmp_path, code: str, watch: Watch, pattern: str | None = None, stop_after: float | None = None):
    """The entry under the launcher's pump, Progress and a deciding Watchdog: (exit code, the dog)."""
    run = RunDir(tmp_path)
    touched = run.progress_file(KEY, 0)
    touched.parent.mkdir(parents=True, exist_ok=True)
    touched.touch()
    progress = Progress(run, KEY, record=False, pattern=re.compile(pattern) if pattern else None)
    limits = watchdog.Budgets(BUDGET, BUDGET, BUDGET)
    dogs = []

    def on_start(child):
        dog = watchdog.Watchdog(run, KEY, 0, progress, child, decides=True, budgets=limits, builtin=False, watch=watch)
        dog.start()
        dogs.append(dog)
        if stop_after is not None:
            threading.Timer(stop_after, lambda: os.kill(child.pid, signal.SIGSTOP)).start()

    env = {**os.environ, "HPC_MM_PROGRESS_FILE": str(touched), "RANK": "0"}
    rc, _ = run_forwarding_signals(
        [sys.executable, "-c", textwrap.dedent(code)],
        tmp_path,
        env,
        on_line=progress.feed,
        on_start=on_start,
        on_output=progress.output,
    )
    for dog in dogs:
        dog.stop()
    return rc, dogs[0]


@pytest.mark.parametrize("name", list(ENTRIES))
def test_an_entry_that_prints_no_iteration_line_is_never_ended_for_it(tmp_path, name):
    rc, dog = supervise(tmp_path, ENTRIES[name], Watch.LIVENESS)
    assert dog.hung is None and rc == 0, (name, dog.hung, rc)
    assert not [e for e in RunDir(tmp_path).reread().events() if e.kind is Kind.HANG]


def test_the_same_entry_stopped_is_hung_and_ended(tmp_path):
    began = time.time()
    rc, dog = supervise(tmp_path, ENTRIES["sampling lines (an inference)"], Watch.LIVENESS, stop_after=0.5)
    assert dog.hung is not None and dog.hung["phase"] == "liveness", dog.hung
    assert rc == -signal.SIGKILL
    assert [b["why"] for b in dog.hung["blamed"]] == ["stopped"]
    assert time.time() - began < 3 * BUDGET + 10  # ended by the watchdog, not by the entry's own end
    assert [e.kind for e in RunDir(tmp_path).reread().events()] == [Kind.HANG]


def test_an_idle_entry_that_neither_prints_nor_works_is_hung(tmp_path):
    rc, dog = supervise(tmp_path, "import time; print('waiting', flush=True); time.sleep(60)", Watch.LIVENESS)
    assert dog.hung is not None and rc == -signal.SIGKILL


def test_a_trainer_that_stops_logging_iterations_is_hung_even_while_it_prints(tmp_path):
    code = """
        import time
        for i in range(1, 4):
            print(f" iteration {i}/100 | lm loss: 1.0 |", flush=True)
            time.sleep(0.3)
        while True:
            print("NCCL WARN still waiting", flush=True)
            time.sleep(0.5)
    """
    rc, dog = supervise(tmp_path, code, Watch.ITERATIONS)
    assert dog.hung is not None and dog.hung["phase"] == "step" and rc == -signal.SIGKILL


def test_a_progress_pattern_of_the_job_counts_and_its_absence_is_a_hang(tmp_path):
    code = """
        import time
        for i in range(1, 31):
            print(f"epoch 0 batch {i}", flush=True)
            time.sleep(0.2)
    """
    rc, dog = supervise(tmp_path / "a", code, Watch.PATTERN, pattern=r"batch (?P<it>\d+)")
    assert dog.hung is None and rc == 0
    rc, dog = supervise(tmp_path / "b", code, Watch.PATTERN, pattern=r"^evaluated \d+")
    assert dog.hung is not None and dog.hung["phase"] == "startup"


@pytest.mark.parametrize(
    "kind, pattern, watch",
    [("megatron", None, Watch.ITERATIONS), ("fsdp2", None, Watch.ITERATIONS), ("command", None, Watch.LIVENESS)]
    + [(kind, "step (\\d+)", Watch.PATTERN) for kind in ("megatron", "command")],
)
def test_every_entry_kind_has_a_watch(kind, pattern, watch):
    from dataclasses import replace

    from hpc_mm.job.spec import JobSpec

    spec = JobSpec(name="x")
    spec = replace(spec, fault=replace(spec.fault, progress_pattern=pattern))
    assert CONTRACTS[kind].watch(spec) is watch


@pytest.mark.parametrize(
    "kind, said",
    [
        ("megatron", "iteration and checkpoint lines; budgets start-up 900 s, step 180 s, checkpoint 600 s"),
        ("command", "liveness only (output, CPU time or $HPC_MM_PROGRESS_FILE moving; no progress line is needed)"),
    ],
)
def test_validate_names_the_signal_and_its_budget(tmp_path, kind, said):
    import yaml

    from conftest import JOBS

    job = yaml.safe_load((JOBS / "tiny-vlm.yaml").read_text())
    job["entry"]["kind"] = kind
    if kind == "command":
        job["entry"]["script"] = "infer.py"
    job["mm"] = {k: str(JOBS / v) for k, v in job["mm"].items()}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    rc, out, err = cli_in_process("validate", path)
    assert rc == 0, err
    assert said in out, out


def test_the_hang_notification_is_delivered_even_when_the_launcher_exits_at_once(tmp_path):
    """The launcher exits as soon as its step ends; the watchdog tells `notify:` of the hang only after
    it ended the step. It must finish that before the process goes (it was a daemon thread that died
    with it: the hang was handled, its notification lost, one CI run in N)."""
    import subprocess

    import yaml

    from conftest import JOBS

    heard = tmp_path / "heard"
    job = yaml.safe_load((JOBS / "tiny-vlm.yaml").read_text())
    job["mm"] = {k: str(JOBS / v) for k, v in job["mm"].items()}
    job["notify"] = {"command": f"sleep 1; cat > {heard}", "on": ["hang"]}
    run = tmp_path / "run"
    rc, _, err = cli_in_process("render", _write(tmp_path / "job.yaml", job), "--run-dir", run, "-o", os.devnull)
    assert rc == 0, err
    script = f"""
import subprocess, sys
from hpc_mm.launch import watchdog
from hpc_mm.launch.progress import Progress
from hpc_mm.names import Watch
from hpc_mm.run.events import StartKey
from hpc_mm.run.rundir import RunDir
watchdog.HEARTBEAT = 0.2
run, key = RunDir({str(run)!r}), StartKey("9", 0)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={{"RANK": "0"}})
dog = watchdog.Watchdog(run, key, 0, Progress(run, key, record=False), child, decides=True,
                        budgets=watchdog.Budgets(1, 1, 1), builtin=False, watch=Watch.LIVENESS)
dog.start()
child.wait()  # ended by the watchdog
dog.stop()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    told = __import__("json").loads(heard.read_text())
    assert told["event"] == "hang" and told["job_id"] == "9", told


def _write(path, job):
    import yaml

    path.write_text(yaml.safe_dump(job))
    return path


def test_a_rank_stuck_on_its_way_out_after_the_last_checkpoint_is_ended_soon(tmp_path, monkeypatch):
    """Training over and its checkpoint committed, a process that does not exit (a peer aborted in
    teardown, a process group never destroyed) is ended after the teardown budget, not a step's."""
    monkeypatch.setattr(watchdog, "TEARDOWN_SECONDS", 1.0)
    code = """
        import time
        for i in range(1, 4):
            print(f" iteration {i}/3 | lm loss: 1.0 |", flush=True)
        print("successfully saved checkpoint from iteration 3 to /ckpt [ t 1/1, p 1/1 ]", flush=True)
        time.sleep(60)
    """
    run = RunDir(tmp_path)
    progress = Progress(run, KEY, record=False)
    dogs = []

    def on_start(child):
        dog = watchdog.Watchdog(
            run, KEY, 0, progress, child, decides=True, budgets=watchdog.Budgets(100, 100, 100), builtin=False
        )
        dog.start()
        dogs.append(dog)

    began = time.time()
    rc, _ = run_forwarding_signals(
        [sys.executable, "-c", textwrap.dedent(code)],
        tmp_path,
        dict(os.environ),
        on_line=progress.feed,
        on_start=on_start,
    )
    dogs[0].stop()
    assert dogs[0].hung is not None and dogs[0].hung["phase"] == "teardown", dogs[0].hung
    assert rc == -signal.SIGKILL and time.time() - began < 30
