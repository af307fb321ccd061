"""Standby interpreters (launch/standby.py): a start handed to a warm interpreter runs exactly as a
fresh process would (argv, environment, folder, stdio, signals, exit status), a client whose pool
is missing or empty starts cold, and a standby never outlives its client or its pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpc_mm.launch import standby, warm
from hpc_mm.launch.command import command
from hpc_mm.launch.plan import node_share, resolve_plan
from hpc_mm.launch.procs import ranks_under

ENTRY = textwrap.dedent(
    """
    import os, signal, sys, time
    print("main", __name__, sys.argv[1:], os.getcwd(), os.environ.get("PROBE"), flush=True)
    print("preloaded", "wave" in sys.modules, "pid", os.getpid(), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if sys.argv[1:2] == ["wait"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print("waiting", flush=True)
        time.sleep(60)
    if sys.argv[1:2] == ["ignored?"]:
        print("USR1 ignored", signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, flush=True)
    sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
    """
)


@pytest.fixture
def pool(tmp_path):
    name = f"test-{os.getpid()}-{time.monotonic_ns()}"
    code = textwrap.dedent(
        f"""
        import os, sys
        from hpc_mm.launch.standby import Pool
        Pool({name!r}, [sys.executable], {str(tmp_path)!r}, dict(os.environ), ["wave"], 2,
             report=__import__("pathlib").Path({str(tmp_path / "pool.json")!r}), refill_after=0).serve()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.time() + 60
    while not (tmp_path / "pool.json").exists() or '"ready": 2' not in (tmp_path / "pool.json").read_text():
        assert time.time() < deadline and proc.poll() is None, "the pool did not get ready"
        time.sleep(0.2)
    yield name, proc
    proc.terminate()
    proc.wait(10)


def client(name: str, tmp_path: Path, *args, **kw) -> subprocess.Popen:
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    env = {**os.environ, "PROBE": "yes", standby.ENV: name}
    return subprocess.Popen(
        [sys.executable, str(standby.CLIENT), str(script), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_a_start_handed_to_a_standby_runs_as_the_process_it_stands_for(pool, tmp_path):
    name, _ = pool
    proc = client(name, tmp_path, "a b", "3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert f"main __main__ ['a b', '3'] {tmp_path} yes" in out
    assert "preloaded True" in out  # the standby had imported its module ahead
    assert "to stderr" in err and "cold start" not in err


def test_signals_reach_the_entry_and_its_exit_is_the_clients(pool, tmp_path):
    name, _ = pool
    proc = client(name, tmp_path, "wait")
    line = proc.stdout.readline()
    while "waiting" not in line:
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 7
    ignoring = client(name, tmp_path, "ignored?", preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    assert "USR1 ignored True" in ignoring.communicate(timeout=60)[0]


def test_a_standby_dies_with_its_client_and_the_pool_refills(pool, tmp_path):
    name, _ = pool
    proc = client(name, tmp_path, "wait")
    pid = None
    for line in proc.stdout:
        if line.startswith("preloaded"):
            pid = int(line.split()[-1])
        if "waiting" in line:
            break
    assert pid is not None and pid != proc.pid and standby.stand_in(proc.pid) == pid
    proc.kill()  # the step ended under it
    proc.wait()
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert standby.stand_in(proc.pid) is None
    again = client(name, tmp_path, "0")  # another start finds a standby again
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "preloaded True" in out and "cold start" not in err


def test_without_a_pool_the_client_starts_cold(tmp_path):
    proc = client(f"nobody-{os.getpid()}", tmp_path, "x", "5")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5 and "main __main__ ['x', '5']" in out and "preloaded False" in out
    assert "cold start" not in err


def test_a_pool_whose_standbys_are_all_taken_says_so_and_the_start_is_cold(pool, tmp_path):
    name, _ = pool
    busy = [client(name, tmp_path, "wait") for _ in range(2)]  # both standbys taken (refilled at once here)
    for proc in busy:
        for line in proc.stdout:
            if "waiting" in line:
                break
    late = client(name, tmp_path, "1")  # before the refill is ready
    out, err = late.communicate(timeout=60)
    for proc in busy:
        proc.kill()
        proc.wait()
    assert late.returncode == 1 and ("preloaded False" in out) == ("a cold start" in err)


def test_a_pool_is_not_there_until_a_standby_is_ready(tmp_path):
    name = f"slow-{os.getpid()}"
    code = (
        "import os,sys; from hpc_mm.launch.standby import Pool; "
        f"Pool({name!r}, [sys.executable], '.', dict(os.environ), [], 1, refill_after=3).serve()"
    )
    pool = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    try:
        time.sleep(1)
        proc = client(name, tmp_path, "1")  # the pool fills only after 3 s: no socket yet, a plain start
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "cold start" not in err and "preloaded False" in out
    finally:
        pool.terminate()
        pool.wait(10)


def test_the_pool_ends_its_standbys_when_it_ends(pool, tmp_path):
    name, proc = pool
    waiting = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
    assert len(waiting) == 2
    proc.terminate()
    proc.wait(10)
    time.sleep(0.5)
    assert not [p for p in waiting if Path(f"/proc/{p}").exists() and _state(p) != "Z"]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_ranks_are_found_in_their_standbys(pool, tmp_path):
    name, _ = pool
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    env = {**os.environ, "RANK": "4", standby.ENV: name}
    proc = subprocess.Popen(
        [sys.executable, str(standby.CLIENT), str(script), "wait"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "waiting" in line:
            break
    ranks = ranks_under(proc.pid)
    proc.kill()
    proc.wait()
    assert len(ranks) == 1 and ranks[0]["rank"] == 4 and ranks[0]["pid"] != proc.pid


TINY = Path(__file__).resolve().parents[2] / "jobs" / "tiny-vlm.yaml"


def test_torchrun_and_its_workers_start_through_the_client(tmp_path, monkeypatch):
    from tests.unit.test_plan import slurm

    monkeypatch.setattr(warm, "available", lambda plan: warm.enabled(plan.spec))  # as if the pool answered
    plan = resolve_plan(str(TINY), [], tmp_path / "run", env=slurm(0))
    cmd = command(plan)
    assert cmd[1] == str(standby.CLIENT) and cmd[2] == "-c"
    at = cmd.index("--no-python")
    assert cmd[at + 1 : at + 5] == [sys.executable, str(standby.CLIENT), "-m", "hpc_mm.train"]
    # a spare node's pool: not in the training step, so no plan of one
    share = node_share(str(TINY), tmp_path / "run", env=slurm(2, nodes=3))
    assert warm.per_node(share) == plan.nproc_per_node + 1 and share.job_id == plan.job_id
    assert {"torch", "torch.distributed.run", "hpc_mm.train.loop"} <= set(warm.modules(share))
    ranks = resolve_plan(str(TINY), ["entry.launcher=srun"], tmp_path / "run2", env=slurm(0))
    assert command(ranks)[1:4] == [str(standby.CLIENT), "-m", "hpc_mm.train"]
    cold = resolve_plan(str(TINY), ["requeue.inside=false"], tmp_path / "run3", env=slurm(0))
    assert str(standby.CLIENT) not in command(cold)


def test_links_in_a_folder_others_can_write_are_never_followed(tmp_path, monkeypatch):
    folder = tmp_path / "links"
    folder.mkdir(mode=0o700)
    me, parent = os.getpid(), os.getppid()
    (folder / str(me)).write_text(f"{parent} {standby._started(parent)} {standby._started(me)}")
    monkeypatch.setattr(standby, "links_dir", lambda: folder)
    assert standby.stand_in(me) == parent and standby.stand_ins() == {me: parent}
    (folder / str(me)).write_text(f"{parent} 1 {standby._started(me)}")  # written for another process
    assert standby.stand_in(me) is None  # (a pid reused since)
    (folder / str(me)).write_text(f"{parent} {standby._started(parent)} {standby._started(me)}")
    folder.chmod(0o777)  # anyone could plant a link there (and have the launcher kill what it names)
    assert standby.stand_in(me) is None and standby.stand_ins() == {}
